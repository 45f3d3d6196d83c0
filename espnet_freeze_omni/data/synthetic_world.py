"""The embedded corpus: a generated world of facts, spoken by espeak-ng.

A seed fixes everything. The world holds invented countries (capital, language), cities
(country) and people (city, job, favorite color, pet and its name, age). Each fact has one
statement ("The capital of Zorvia is Quell.") and several question phrasings ("What is the
capital of Zorvia?", "Which city is the capital of Zorvia?", ...). From it come:

(a) ASR sentences (statements, questions, side talk) split train/dev/test BY TEXT: no dev
    or test sentence, spoken test question (qa_test) or test side talk is ever spoken in
    train, whatever the voice;
(b) multi-turn Q&A dialogs, JSON lines {"id", "turns": [{"role", "content"}, ...]}; a test
    question is a (fact, phrasing) pair whose text never occurs in train, while its fact is
    in the LLM's training text (every statement is) and, by default, is also asked in train
    QA with another phrasing, so a small LLM trained on statements + train QA can answer it;
(c) reference answers {"id", "question", "answers": [aliases]} for the containment scorer;
(d) side talk not addressed to the assistant ("Hey Sam, pass me the salt."), held out by
    text too, for the state head (turn label 2);
(e) a TTS corpus for the codec and the speech decoder, `tts_train` / `tts_dev`: assistant
    answers in exactly the phrasing the dialogs' assistant turns use (the fact statements,
    "Raser Theeth has a cat named Tidoun."), all in ONE assistant voice (ASSISTANT_VOICE:
    en-us at normal speed and pitch, a voice the ASR sets also use, so the recipe's own ASR
    can score speech output). The answers of the test questions (the statements of the
    qa_test facts) are held out of both. tts_dev holds world answers only; tts_train takes
    the remaining world answers and, when it wants more, answers about extra invented people
    (same statement templates, names never used in the world);
(f) copy dialogs "Repeat after me: <sentence>" -> "<sentence>" (`repeat_train.jsonl`, the
    format of qa_train.jsonl), the sentences drawn from the ASR train texts and the train
    dialogs, never from a dev, test or qa_test text: the small frozen LLM learns to copy, so
    that ASR through it (speech input stage 2) is learnable.

`make_corpus` writes the text artifacts under `<out>/local/world/` and, unless text_only,
speaks them into Kaldi data dirs `<out>/{train,dev,test,qa_train,qa_test,tts_train,tts_dev}`
at 16 kHz with `turn_info` (label 1 addressed / 2 side talk, speech end in seconds); every
utterance of the ASR and QA sets ends with 0.6-1.0 s of silence so the turn end is learnable,
every TTS utterance with TTS_TRAILING_SILENCE.

(g) `qa_test_unseen` (make_corpus, unless unseen_test is off): the qa_test utterances (same
    ids, texts, labels, trailing silences and reference answers) spoken in held-out voices,
    speeds, pitches and synthesized noise that no spoken set of the corpus uses
    (espeak.UNSEEN_TEST_CONDITIONS; check_held_out refuses an overlap), from a random stream
    of its own: every other set is byte-identical with or without it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from espnet_freeze_omni.data.espeak import (VOICE_POOLS, HeldOutConditions, pick_voice,
                                            voice_index)
from espnet_freeze_omni.scoring.numbers import number_to_words

JOBS = ("baker", "pilot", "teacher", "doctor", "farmer", "painter", "nurse", "engineer",
        "chef", "fisherman", "carpenter", "librarian", "musician", "gardener", "tailor",
        "dentist", "architect", "mechanic", "photographer", "astronomer")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver",
          "pink", "brown", "gold")
PETS = ("dog", "cat", "parrot", "rabbit", "hamster", "turtle", "goldfish", "horse", "goat",
        "owl")
# Side talk is addressed to people with ordinary names; world names are invented syllables.
HOUSEMATES = ("Sam", "Alex", "Maria", "Tom", "Lena", "Priya", "Omar", "Kenji", "Rosa", "Ben",
              "Nora", "Luis", "Emma", "Jack", "Aisha", "Paul")
OBJECTS = ("salt", "keys", "remote", "charger", "umbrella", "scissors", "towel", "notebook",
           "glasses", "wallet", "jacket", "pepper", "milk", "blanket")
SIDE_TALK_TEMPLATES = (
    "Hey {n}, pass me the {o}.",
    "{n}, have you seen my {o}?",
    "{n}, can you grab the {o} from the kitchen?",
    "Hey {n}, what time is it?",
    "{n}, I'll be back in {m} minutes.",
    "Wait a second {n}, I'm on the phone.",
    "{n}, did you remember to bring the {o}?",
    "Sorry {n}, I left the {o} in the car.",
    "{n}, dinner is almost ready.",
    "Hey {n}, could you turn down the music?",
    "{n}, don't forget the {o} tomorrow.",
    "Thanks {n}, just put the {o} on the table.",
)

# The assistant's one voice (data/tts_*): espeak-ng's en-us at its normal speed and pitch,
# one of the voice/speed/pitch combinations pick_voice gives the ASR sets.
ASSISTANT_VOICE = dict(voice="en-us", speed=160, pitch=50)
TTS_TRAILING_SILENCE = 0.2  # seconds after each TTS utterance (a short, fixed pause)
REPEAT_PROMPT = "Repeat after me: {}"
SPOKEN_SETS = ("train", "dev", "test", "qa_train", "qa_test", "tts_train", "tts_dev")


@functools.lru_cache(maxsize=None)  # _utterance asks for it for one utterance in ten
def assistant_voice_index() -> int:
    """The first voice index that espeak.pick_voice turns into ASSISTANT_VOICE."""
    for index in range(1000):
        if pick_voice(index) == ASSISTANT_VOICE:
            return index
    raise ValueError(f"espeak.pick_voice never gives {ASSISTANT_VOICE}")


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "kr", "tr", "st", "th", "sh", "gl", "pl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m", "th")
_COUNTRY_ENDINGS = ("ia", "land", "stan", "ora", "avia", "ium")
_LANGUAGE_ENDINGS = ("ish", "ese", "ic", "ian")

# relation -> (statement template, question phrasings). Placeholders: {c} country,
# {city}, {p} person, {lang}, {job} (with article), {color}, {pet}, {petname}, {age}.
RELATIONS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "capital": ("The capital of {c} is {city}.", (
        "What is the capital of {c}?", "Which city is the capital of {c}?",
        "Tell me the capital of {c}.", "Do you know the capital of {c}?")),
    "language": ("People in {c} speak {lang}.", (
        "What language do people speak in {c}?", "Which language is spoken in {c}?",
        "What is the main language of {c}?")),
    "city_country": ("{city} is a city in {c}.", (
        "Which country is {city} in?", "In what country is {city}?",
        "Where is the city of {city}?")),
    "lives_in": ("{p} lives in {city}.", (
        "Where does {p} live?", "In which city does {p} live?", "What city is {p} from?")),
    "job": ("{p} works as {job}.", (
        "What does {p} do for a living?", "What is {p}'s job?",
        "What is the occupation of {p}?")),
    "color": ("{p}'s favorite color is {color}.", (
        "What is {p}'s favorite color?", "Which color does {p} like best?",
        "What color does {p} love most?")),
    "pet": ("{p} has a {pet} named {petname}.", (
        "What kind of pet does {p} have?", "What animal does {p} keep as a pet?",
        "Which pet does {p} own?")),
    "pet_name": ("{p} has a {pet} named {petname}.", (
        "What is the name of {p}'s {pet}?", "What is {p}'s {pet} called?",
        "What name did {p} give the {pet}?")),
    "age": ("{p} is {age} years old.", (
        "How old is {p}?", "What is the age of {p}?", "How many years old is {p}?")),
}


@dataclasses.dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answers: Tuple[str, ...]  # aliases; the first is how the statement says it
    statement: str
    questions: Tuple[str, ...]


@dataclasses.dataclass
class World:
    seed: int
    countries: List[dict]
    cities: List[dict]
    people: List[dict]
    facts: List[Fact]

    def to_json(self) -> dict:
        return dict(seed=self.seed, countries=self.countries, cities=self.cities,
                    people=self.people, facts=[dataclasses.asdict(f) for f in self.facts])


class _Names:
    """Unique pronounceable invented names (never one of the few real words seen so far)."""

    REAL_WORDS = {"befoul", "foster", "puma", "feel", "trek", "shun", "them", "stem", "sister",
                  "butter", "doctor", "bison", "kitten", "melon", "lemon", "robin", "tuna",
                  "salon", "sonar", "tutor", "motor", "rotor", "solar", "polar", "lunar"}
    _CONSONANT_CODAS = tuple(c for c in _CODAS if c)

    def __init__(self, rng: random.Random, reserved: Sequence[str] = ()):
        self.rng = rng
        self.used = {n.lower() for n in reserved} | self.REAL_WORDS

    def make(self, syllables: int, ending_choices: Sequence[str] = ()) -> str:
        while True:
            ending = self.rng.choice(ending_choices) if ending_choices else ""
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS)
                     for _ in range(syllables)]
            # a consonant between the body and a vowel ending ("Zorv-ia", not "Liia")
            codas = self._CONSONANT_CODAS if ending[:1] in tuple("aeiou") else _CODAS
            name = ("".join(parts) + self.rng.choice(codas) + ending).capitalize()
            if name.lower() not in self.used and 4 <= len(name) <= 12:
                self.used.add(name.lower())
                return name


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def build_world(seed: int, num_countries: int = 24, num_people: int = 120,
                extra_cities_per_country: int = 1) -> World:
    """The same seed always gives the same world."""
    rng = random.Random(f"freeze-omni-world-{seed}")
    names = _Names(rng, reserved=HOUSEMATES)
    countries, cities, people, facts = [], [], [], []
    for _ in range(num_countries):
        country = names.make(rng.choice((1, 2)), _COUNTRY_ENDINGS)
        language = names.make(1, _LANGUAGE_ENDINGS)
        capital = names.make(2)
        countries.append(dict(name=country, capital=capital, language=language))
        cities.append(dict(name=capital, country=country, capital=True))
        for _ in range(extra_cities_per_country):
            cities.append(dict(name=names.make(2), country=country,
                               capital=False))
    for _ in range(num_people):
        first, last = names.make(2), names.make(rng.choice((1, 2)))
        people.append(dict(
            name=f"{first} {last}", city=rng.choice(cities)["name"], job=rng.choice(JOBS),
            color=rng.choice(COLORS), pet=rng.choice(PETS), petname=names.make(2),
            age=rng.randint(18, 90)))

    def fact(relation: str, subject: str, answers: Sequence[str], **slots) -> Fact:
        statement, questions = RELATIONS[relation]
        return Fact(relation, subject, tuple(answers), statement.format(**slots),
                    tuple(q.format(**slots) for q in questions))

    for c in countries:
        facts.append(fact("capital", c["name"], [c["capital"]], c=c["name"], city=c["capital"]))
        facts.append(fact("language", c["name"], [c["language"]], c=c["name"],
                          lang=c["language"]))
    for city in cities:
        facts.append(fact("city_country", city["name"], [city["country"]], c=city["country"],
                          city=city["name"]))
    for p in people:
        slots = dict(p=p["name"], city=p["city"], job=_article(p["job"]), color=p["color"],
                     pet=p["pet"], petname=p["petname"], age=number_to_words(p["age"]))
        facts.append(fact("lives_in", p["name"], [p["city"]], **slots))
        facts.append(fact("job", p["name"], [p["job"]], **slots))
        facts.append(fact("color", p["name"], [p["color"]], **slots))
        facts.append(fact("pet", p["name"], [p["pet"]], **slots))
        facts.append(fact("pet_name", p["name"], [p["petname"]], **slots))
        facts.append(fact("age", p["name"], [number_to_words(p["age"]), str(p["age"])],
                          **slots))
    return World(seed, countries, cities, people, facts)


def side_talk_sentences(seed: int) -> List[str]:
    """Every distinct side-talk sentence, in a seed-dependent order."""
    rng = random.Random(f"freeze-omni-side-talk-{seed}")
    sentences = set()
    for template in SIDE_TALK_TEMPLATES:
        for n in HOUSEMATES:
            for o in OBJECTS if "{o}" in template else ("",):
                for m in ("five", "ten", "twenty") if "{m}" in template else ("",):
                    sentences.add(template.format(n=n, o=o, m=m))
    ordered = sorted(sentences)
    rng.shuffle(ordered)
    return ordered


@dataclasses.dataclass
class CorpusSizes:
    num_train: int = 2000  # ASR utterances
    num_dev: int = 100
    num_test: int = 100
    num_qa_train: int = 3000  # Q/A pairs in the train dialogs (text)
    num_qa_test: int = 200  # test questions (text and spoken)
    num_spoken_qa_train: int = 600  # train user turns also spoken (data/qa_train)
    num_side_talk_train: int = 200  # spoken side talk in data/qa_train
    num_side_talk_test: int = 50  # spoken side talk in data/qa_test
    max_turns: int = 3  # user turns per dialog
    num_countries: int = 24
    num_people: int = 120
    num_tts_train: int = 1500  # assistant answers in the assistant voice (codec, speech output)
    num_tts_dev: int = 100  # their validation set (world answers never in tts_train)
    num_repeat_train: int = 1500  # "Repeat after me: ..." dialogs (LLM training, text)
    # spoken train questions with a pause of 0.5-2 s inside (labelled listen): the state head
    # learns that a pause is not the end of a turn
    num_paused_qa_train: int = 600


@dataclasses.dataclass(frozen=True)
class Utterance:
    utt_id: str
    text: str
    label: int  # 1 addressed to the assistant, 2 side talk
    voice_index: int
    trailing_silence: float
    pause: Optional[Tuple[int, float]] = None  # (words before the pause, seconds)


# With the diverse voice pool, one spoken ASR/QA utterance in ASSISTANT_VOICE_SHARE is in
# the assistant's voice: the recipe's ASR listens to the spoken answers (qa_acc_speech_out)
# and must have heard that voice, which a draw among ~10^6 conditions would never give.
ASSISTANT_VOICE_SHARE = 10


def _utterance(rng: random.Random, utt_id: str, text: str, label: int,
               voice_pool: str = "classic") -> Utterance:
    raw = rng.randrange(1 << 20)
    if voice_pool == "diverse" and raw % ASSISTANT_VOICE_SHARE == 0:
        index = assistant_voice_index()
    else:
        index = voice_index(raw, voice_pool)
    return Utterance(utt_id, text, label, index,
                     round(rng.uniform(0.6, 1.0), 2))


def _dialogs(pairs: List[Tuple[int, int]], world: World, prefix: str, max_turns: int,
             rng: random.Random) -> List[dict]:
    dialogs, i = [], 0
    while i < len(pairs):
        n = rng.randint(1, max_turns)
        turns = []
        for f, q in pairs[i:i + n]:
            fact = world.facts[f]
            turns.append(dict(role="user", content=fact.questions[q]))
            turns.append(dict(role="assistant", content=fact.statement))
        dialogs.append(dict(id=f"{prefix}-{len(dialogs) + 1:05d}", turns=turns,
                            facts=[[f, q] for f, q in pairs[i:i + n]]))
        i += n
    return dialogs


@dataclasses.dataclass
class Corpus:
    world: World
    qa_train: List[dict]
    qa_test: List[dict]
    qa_test_refs: List[dict]
    side_talk_train: List[str]
    side_talk_test: List[str]
    spoken: Dict[str, List[Utterance]]  # data set -> utterances
    repeat_train: List[dict] = dataclasses.field(default_factory=list)  # copy dialogs
    # qa_test re-spoken in held-out conditions (make_corpus fills it: unseen_test_plan)
    unseen_test: List["UnseenUtterance"] = dataclasses.field(default_factory=list)


def _extra_answers(world: World, rng: random.Random, count: int) -> List[str]:
    """`count` statements about invented people who are not in the world (living in its
    cities), in the RELATIONS statement templates; none can be a world answer."""
    reserved = list(HOUSEMATES)
    for c in world.countries:
        reserved += [c["name"], c["capital"], c["language"]]
    reserved += [c["name"] for c in world.cities]
    for p in world.people:
        reserved += p["name"].split() + [p["petname"]]
    names = _Names(rng, reserved)
    person_relations = ("lives_in", "job", "color", "pet", "age")
    sentences: List[str] = []
    while len(sentences) < count:
        first, last = names.make(2), names.make(rng.choice((1, 2)))
        slots = dict(p=f"{first} {last}", city=rng.choice(world.cities)["name"],
                     job=_article(rng.choice(JOBS)), color=rng.choice(COLORS),
                     pet=rng.choice(PETS), petname=names.make(2),
                     age=number_to_words(rng.randint(18, 90)))
        sentences += [RELATIONS[r][0].format(**slots) for r in person_relations]
    rng.shuffle(sentences)
    return sentences[:count]


def _tts_sets(world: World, qa_test: List[dict], seed: int, sizes: CorpusSizes
              ) -> Dict[str, List[Utterance]]:
    """tts_train / tts_dev: assistant answers in ASSISTANT_VOICE, the qa_test answers held
    out; tts_dev and tts_train share no text."""
    rng = random.Random(f"freeze-omni-tts-{seed}")
    held_out = {world.facts[f].statement for d in qa_test for f, _ in d["facts"]}
    answers = [s for s in dict.fromkeys(f.statement for f in world.facts) if s not in held_out]
    rng.shuffle(answers)
    if sizes.num_tts_dev >= len(answers) and sizes.num_tts_train > 0:
        raise ValueError(f"num_tts_dev={sizes.num_tts_dev} leaves none of the world's "
                         f"{len(answers)} answers (test answers held out) for tts_train")
    dev, rest = answers[:sizes.num_tts_dev], answers[sizes.num_tts_dev:]
    train = rest[:sizes.num_tts_train]
    train += _extra_answers(world, rng, sizes.num_tts_train - len(train))
    voice = assistant_voice_index()
    return {name: [Utterance(f"{name}-{i + 1:05d}", t, 1, voice, TTS_TRAILING_SILENCE)
                   for i, t in enumerate(texts)]
            for name, texts in (("tts_train", train), ("tts_dev", dev))}


def _repeat_dialogs(train_texts: Sequence[str], unseen: set, seed: int,
                    count: int) -> List[dict]:
    """`count` one-turn copy dialogs over the train texts that are not in `unseen`."""
    rng = random.Random(f"freeze-omni-repeat-{seed}")
    pool = [t for t in dict.fromkeys(train_texts) if t not in unseen]
    if count and not pool:
        raise ValueError("no train sentence for the repeat dialogs")
    rng.shuffle(pool)
    return [dict(id=f"repeat_train-{i + 1:05d}",
                 turns=[dict(role="user", content=REPEAT_PROMPT.format(pool[i % len(pool)])),
                        dict(role="assistant", content=pool[i % len(pool)])])
            for i in range(count)]


def generate_corpus(seed: int, sizes: CorpusSizes = CorpusSizes(),
                    test_facts_asked_in_train: bool = True,
                    voice_pool: str = "classic") -> Corpus:
    """All texts of the corpus (no audio); deterministic given seed and sizes. `voice_pool`
    (espeak.VOICE_POOLS) picks the voices of the ASR and QA sets; it changes no text."""
    if voice_pool not in VOICE_POOLS:
        raise ValueError(f"voice_pool must be one of {VOICE_POOLS}, got {voice_pool!r}")
    world = build_world(seed, sizes.num_countries, sizes.num_people)
    rng = random.Random(f"freeze-omni-corpus-{seed}")

    # --- QA: hold test (fact, phrasing) pairs out by text ---
    askable = list(range(len(world.facts)))
    rng.shuffle(askable)
    if sizes.num_qa_test > len(askable):
        raise ValueError(f"num_qa_test={sizes.num_qa_test} exceeds the world's "
                         f"{len(askable)} facts: raise num_people")
    test_pairs = [(f, rng.randrange(len(world.facts[f].questions)))
                  for f in askable[:sizes.num_qa_test]]
    test_texts = {world.facts[f].questions[q] for f, q in test_pairs}
    train_pool = [(f, q) for f in range(len(world.facts))
                  for q in range(len(world.facts[f].questions))
                  if world.facts[f].questions[q] not in test_texts]
    rng.shuffle(train_pool)
    if test_facts_asked_in_train:
        # put one other phrasing of every test fact first, so it surely is in train QA
        tested = {f for f, _ in test_pairs}
        first = {}
        for f, q in train_pool:
            if f in tested and f not in first:
                first[f] = (f, q)
        priority = [first[f] for f, _ in test_pairs if f in first]
        chosen = set(priority)
        train_pool = priority + [p for p in train_pool if p not in chosen]
    train_pairs = [train_pool[i % len(train_pool)] for i in range(sizes.num_qa_train)]
    rng.shuffle(train_pairs)
    qa_train = _dialogs(train_pairs, world, "qa_train", sizes.max_turns, rng)
    qa_test = _dialogs(test_pairs, world, "qa_test", min(2, sizes.max_turns), rng)
    refs = []
    for d in qa_test:
        for k, (f, q) in enumerate(d["facts"], 1):
            fact = world.facts[f]
            refs.append(dict(id=f"{d['id']}-t{k}", question=fact.questions[q],
                             answers=list(fact.answers), relation=fact.relation))

    # --- side talk, held out by text ---
    side = side_talk_sentences(seed)
    n_side_test = sizes.num_side_talk_test
    side_test, side_train = side[:n_side_test], side[n_side_test:]

    # --- ASR sentences: statements, questions and side talk; dev/test held out by text ---
    # The spoken test questions (qa_test) and test side talk stay out of every ASR set, so
    # speech-in QA and the state head are scored on sentences never heard in training.
    fact_sentences = ({f.statement for f in world.facts} |
                      {q for f in world.facts for q in f.questions}) - {r["question"] for r in refs}
    # side talk is about one sentence in seven of the ASR data, not a third of it
    pool = sorted(fact_sentences | set(side_train[:max(1, len(fact_sentences) // 6)]))
    rng.shuffle(pool)
    n_dev, n_test = sizes.num_dev, sizes.num_test
    if n_dev + n_test >= len(pool):
        raise ValueError("num_dev + num_test leave no sentence for training")
    asr_test, asr_dev, asr_train_pool = pool[:n_test], pool[n_test:n_test + n_dev], \
        pool[n_test + n_dev:]
    asr_train = [asr_train_pool[i % len(asr_train_pool)] for i in range(sizes.num_train)]
    side_set = set(side)

    def asr_set(name: str, texts: List[str]) -> List[Utterance]:
        return [_utterance(rng, f"asr_{name}-{i + 1:05d}", t, 2 if t in side_set else 1,
                           voice_pool) for i, t in enumerate(texts)]

    spoken = {"train": asr_set("train", asr_train), "dev": asr_set("dev", asr_dev),
              "test": asr_set("test", asr_test)}
    qa_train_utts = [_utterance(rng, f"{d['id']}-t{k}", turn["content"], 1, voice_pool)
                     for d in qa_train
                     for k, turn in enumerate((t for t in d["turns"] if t["role"] == "user"), 1)]
    side_train_utts = [_utterance(rng, f"side_train-{i + 1:05d}", side_train[i % len(side_train)],
                                  2, voice_pool) for i in range(sizes.num_side_talk_train)]
    spoken["qa_train"] = _with_pauses(qa_train_utts[:sizes.num_spoken_qa_train],
                                      sizes.num_paused_qa_train, seed) + side_train_utts
    spoken["qa_test"] = [_utterance(rng, r["id"], r["question"], 1, voice_pool)
                         for r in refs] + \
        [_utterance(rng, f"side_test-{i + 1:05d}", t, 2, voice_pool)
         for i, t in enumerate(side_test)]

    # --- TTS sets and copy dialogs: random streams of their own, so the sets above are the
    # same with or without them ---
    spoken.update(_tts_sets(world, qa_test, seed, sizes))
    turns = lambda dialogs: [t["content"] for d in dialogs for t in d["turns"]]
    unseen = set(asr_dev) | set(asr_test) | set(side_test) | set(turns(qa_test))
    repeat = _repeat_dialogs(asr_train + turns(qa_train), unseen, seed, sizes.num_repeat_train)
    return Corpus(world, qa_train, qa_test, refs, side_train, side_test, spoken, repeat)


def _with_pauses(utts: List[Utterance], count: int, seed: int) -> List[Utterance]:
    """`count` of the utterances (of 3+ words) get a 0.5-2 s pause after a word inside.

    A random stream of its own: the rest of the corpus is the same with or without pauses."""
    rng = random.Random(seed * 1_000_003 + 7)
    candidates = [i for i, u in enumerate(utts) if len(u.text.split()) >= 3]
    chosen = set(rng.sample(candidates, min(count, len(candidates))))
    out = []
    for i, u in enumerate(utts):
        if i in chosen:
            words = len(u.text.split())
            u = dataclasses.replace(u, pause=(rng.randint(1, words - 1),
                                              round(rng.uniform(0.5, 2.0), 2)))
        out.append(u)
    return out


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


WORLD_README = """Generated by espnet_freeze_omni.bin.make_synthetic_corpus (seed {seed}).
world.json            countries, cities, people and every fact (statement, phrasings, answers)
facts.txt             every fact statement, one a line
llm_text.txt          facts.txt + every turn of qa_train.jsonl: the small LLM's training text
qa_train.jsonl        train dialogs {{"id", "turns": [{{"role", "content"}}, ...], "facts"}}
qa_test.jsonl         test dialogs; no test question text occurs in qa_train.jsonl
qa_test_refs.jsonl    {{"id": "<dialog>-t<k>", "question", "answers": [aliases]}} per test question
repeat_train.jsonl    copy dialogs, format of qa_train.jsonl: user "Repeat after me: <sentence>",
                      assistant "<sentence>"; sentences from the ASR train texts and the train
                      dialogs only (never dev/test/qa_test): the small LLM learns to copy, so
                      ASR through the frozen LLM (speech input stage 2) is learnable
side_talk_{{train,test}}.txt  speech not addressed to the assistant (disjoint by text)
utterances_<set>.tsv  utt_id, turn label, voice index, trailing silence, pause inside the turn
                      (<words before it>:<seconds>, or -), text of data/<set>;
                      tts_train / tts_dev: assistant answers for the codec and the speech
                      decoder (the qa_test answers held out), all in one assistant voice:
                      {voice}
"""


def write_corpus_texts(corpus: Corpus, world_dir: str | Path) -> Path:
    world_dir = Path(world_dir)
    world_dir.mkdir(parents=True, exist_ok=True)
    (world_dir / "world.json").write_text(
        json.dumps(corpus.world.to_json(), indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8")
    statements = list(dict.fromkeys(f.statement for f in corpus.world.facts))
    (world_dir / "facts.txt").write_text("".join(s + "\n" for s in statements),
                                         encoding="utf-8")
    # what the small LLM learns from: every statement, then every train dialog turn
    llm_lines = statements + [t["content"] for d in corpus.qa_train for t in d["turns"]]
    (world_dir / "llm_text.txt").write_text("".join(s + "\n" for s in llm_lines),
                                            encoding="utf-8")
    _write_jsonl(world_dir / "qa_train.jsonl", corpus.qa_train)
    _write_jsonl(world_dir / "qa_test.jsonl", corpus.qa_test)
    _write_jsonl(world_dir / "qa_test_refs.jsonl", corpus.qa_test_refs)
    _write_jsonl(world_dir / "repeat_train.jsonl", corpus.repeat_train)
    for name, lines in (("side_talk_train.txt", corpus.side_talk_train),
                        ("side_talk_test.txt", corpus.side_talk_test)):
        (world_dir / name).write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    for name, utts in corpus.spoken.items():
        with open(world_dir / f"utterances_{name}.tsv", "w", encoding="utf-8") as f:
            for u in utts:
                pause = f"{u.pause[0]}:{u.pause[1]:.2f}" if u.pause else "-"
                f.write(f"{u.utt_id}\t{u.label}\t{u.voice_index}\t{u.trailing_silence:.2f}\t"
                        f"{pause}\t{u.text}\n")
    voice = "espeak-ng -v {voice} -s {speed} -p {pitch}".format(**ASSISTANT_VOICE)
    (world_dir / "README.txt").write_text(WORLD_README.format(seed=corpus.world.seed,
                                                              voice=voice))
    return world_dir


def make_corpus(out_dir: str | Path, seed: int = 0, sizes: CorpusSizes = CorpusSizes(),
                text_only: bool = False, wav_dir: Optional[str | Path] = None,
                num_workers: int = 2, sample_rate: int = 16000,
                sets: Optional[Sequence[str]] = None, unseen_test: bool = True,
                voice_pool: str = "classic") -> Corpus:
    """Write `<out>/local/world/*` and (unless text_only) the spoken data dirs; with
    unseen_test, also `<out>/qa_test_unseen` (qa_test in held-out conditions) and its
    `local/world/qa_test_unseen_refs.jsonl` and `utterances_qa_test_unseen.tsv`."""
    from espnet_freeze_omni.data.spoken_turns import SpokenTurn, synthesize_turn_datadir

    known = SPOKEN_SETS + ((UNSEEN_TEST_SET,) if unseen_test else ())
    unknown = sorted(set(sets or ()) - set(known))
    if unknown:
        off = " (unseen_test is off)" if UNSEEN_TEST_SET in unknown else ""
        raise ValueError(f"unknown data set(s) {unknown}{off}: choose from {' '.join(known)}")
    out_dir = Path(out_dir)
    corpus = generate_corpus(seed, sizes, voice_pool=voice_pool)
    write_corpus_texts(corpus, out_dir / "local" / "world")
    if unseen_test:
        check_held_out(corpus)
        corpus.unseen_test = unseen_test_plan(corpus, seed)
        write_unseen_test_texts(corpus, out_dir / "local" / "world")
    if text_only:
        return corpus
    wav_root = Path(wav_dir) if wav_dir else out_dir / "local" / "wav"
    for name, utts in corpus.spoken.items():
        if sets is not None and name not in sets:
            continue
        if not utts:
            continue
        turns = [SpokenTurn(u.utt_id, u.text, u.label, u.voice_index, u.trailing_silence,
                            u.pause) for u in utts]
        synthesize_turn_datadir(turns, out_dir / name, wav_root / name, sample_rate,
                                num_workers)
    if unseen_test and (sets is None or UNSEEN_TEST_SET in sets) and corpus.unseen_test:
        synthesize_unseen_test(corpus.unseen_test, out_dir / UNSEEN_TEST_SET,
                               wav_root / UNSEEN_TEST_SET, seed, sample_rate, num_workers)
    return corpus


# --------------------------------------------------------------------------------------
# qa_test_unseen: the qa_test questions and side talk in held-out voices and noise
# --------------------------------------------------------------------------------------
UNSEEN_TEST_SET = "qa_test_unseen"


@dataclasses.dataclass(frozen=True)
class UnseenUtterance:
    """A qa_test utterance (same id, text, label, trailing silence) in held-out conditions."""

    utt_id: str
    text: str
    label: int
    voice: str
    speed: int
    pitch: int
    noise: str  # "clean", "white" or "pink" (espeak.NOISE_KINDS)
    snr_db: Optional[float]  # None when clean
    trailing_silence: float
    pause: Optional[Tuple[int, float]] = None

    @property
    def condition(self) -> str:
        """The speaker id of data/qa_test_unseen: every condition of the utterance."""
        noise = self.noise if self.snr_db is None else f"{self.noise}{self.snr_db:g}dB"
        return f"unseen-{self.voice}-s{self.speed}-p{self.pitch}-{noise}".replace("+", "_")


def unseen_test_plan(corpus: Corpus, seed: int,
                     conditions: Optional[HeldOutConditions] = None) -> List[UnseenUtterance]:
    """Every qa_test utterance, in the same order, with a held-out voice (in turn), speed,
    pitch and noise (drawn from a random stream of its own: the other sets and qa_test stay
    the same with or without this set)."""
    from espnet_freeze_omni.data.espeak import NOISE_KINDS, UNSEEN_TEST_CONDITIONS

    c = conditions or UNSEEN_TEST_CONDITIONS
    for kind, snr in c.noises:
        if kind not in NOISE_KINDS or (kind == "clean") != (snr is None):
            raise ValueError(f"held-out noise ({kind!r}, {snr!r}): give ('clean', None) or "
                             "('white' or 'pink', SNR in dB)")
    rng = random.Random(f"freeze-omni-unseen-test-{seed}")
    plan = []
    for i, u in enumerate(corpus.spoken["qa_test"]):
        noise, snr = rng.choice(c.noises)
        plan.append(UnseenUtterance(u.utt_id, u.text, u.label, c.voices[i % len(c.voices)],
                                    rng.choice(c.speeds), rng.choice(c.pitches), noise, snr,
                                    u.trailing_silence, u.pause))
    return plan


def training_conditions(corpus: Corpus) -> Dict[str, set]:
    """The voices, espeak-ng variants, accents (voices without their variant), speeds,
    pitches and noises of every spoken set of the corpus (training sets and the in-domain
    test sets alike: the corpus adds no noise, hence {"clean"})."""
    from espnet_freeze_omni.data.espeak import voice_parts

    picked = [pick_voice(u.voice_index) for utts in corpus.spoken.values() for u in utts]
    voices = {v["voice"] for v in picked}
    return dict(voices=voices,
                accents={voice_parts(v)[0] for v in voices},
                variants={voice_parts(v)[1] for v in voices} - {None},
                speeds={v["speed"] for v in picked},
                pitches={v["pitch"] for v in picked},
                noises={"clean"})


def held_out_overlaps(corpus: Corpus, conditions: Optional[HeldOutConditions] = None
                      ) -> List[str]:
    """What of the held-out conditions the corpus' spoken sets also use (empty: none). A
    held-out voice overlaps when a training voice is the same, uses its variant, or (a
    voice without variant) speaks its accent; a speed or pitch when it is inside the
    training range; a noise (other than clean) when training uses it."""
    from espnet_freeze_omni.data.espeak import UNSEEN_TEST_CONDITIONS, voice_parts

    c = conditions or UNSEEN_TEST_CONDITIONS
    seen = training_conditions(corpus)
    problems = []
    for voice in c.voices:
        accent, variant = voice_parts(voice)
        if voice in seen["voices"]:
            problems.append(f"voice {voice} is a training voice")
        elif variant is not None and variant in seen["variants"]:
            problems.append(f"voice {voice}: variant +{variant} is used in training")
        elif variant is None and accent in seen["accents"]:
            problems.append(f"voice {voice}: accent {accent} is spoken in training")
    for name in ("speeds", "pitches"):
        lo, hi = min(seen[name]), max(seen[name])
        problems += [f"{name[:-1] if name == 'speeds' else 'pitch'} {x} is inside the "
                     f"training range {lo}-{hi}" for x in getattr(c, name) if lo <= x <= hi]
    problems += [f"noise {kind} is used in training" for kind, _ in c.noises
                 if kind != "clean" and kind in seen["noises"]]
    return problems


def check_held_out(corpus: Corpus, conditions: Optional[HeldOutConditions] = None) -> None:
    problems = held_out_overlaps(corpus, conditions)
    if problems:
        raise ValueError(
            "espnet_freeze_omni/data/espeak.py UNSEEN_TEST_CONDITIONS overlaps the training "
            f"conditions (espeak.VOICES / pick_voice): {'; '.join(problems)}")


UNSEEN_README = """
qa_test_unseen_refs.jsonl  the reference answers of data/{set} (a copy of qa_test_refs.jsonl:
                      same ids, questions and side talk as qa_test)
utterances_{set}.tsv  utt_id, turn label, voice, speed, pitch, noise, SNR dB (- when clean),
                      trailing silence, pause, text of data/{set}: qa_test spoken in
                      conditions no training set uses (espeak.UNSEEN_TEST_CONDITIONS)
"""


def write_unseen_test_texts(corpus: Corpus, world_dir: str | Path) -> None:
    world_dir = Path(world_dir)
    _write_jsonl(world_dir / f"{UNSEEN_TEST_SET}_refs.jsonl", corpus.qa_test_refs)
    with open(world_dir / f"utterances_{UNSEEN_TEST_SET}.tsv", "w", encoding="utf-8") as f:
        for u in corpus.unseen_test:
            pause = f"{u.pause[0]}:{u.pause[1]:.2f}" if u.pause else "-"
            snr = "-" if u.snr_db is None else f"{u.snr_db:g}"
            f.write(f"{u.utt_id}\t{u.label}\t{u.voice}\t{u.speed}\t{u.pitch}\t{u.noise}\t{snr}\t"
                    f"{u.trailing_silence:.2f}\t{pause}\t{u.text}\n")
    with open(world_dir / "README.txt", "a", encoding="utf-8") as f:
        f.write(UNSEEN_README.format(set=UNSEEN_TEST_SET))


def synthesize_unseen_test(plan: Sequence[UnseenUtterance], data_dir: str | Path,
                           wav_dir: str | Path, seed: int, sample_rate: int = 16000,
                           num_workers: int = 2) -> Path:
    """Speak the plan into a data dir with turn_info. The speech end is measured on the
    clean synthesis (as for qa_test) before the noise is added over the whole utterance
    (its trailing silence included; each utterance's noise seeded by seed and utt id)."""
    import zlib

    from espnet_freeze_omni.data.kaldi_table import read_kaldi_map, write_turn_info
    from espnet_freeze_omni.data.speech_end import speech_end_seconds
    from espnet_freeze_omni.data.espeak import SpokenUtterance, add_noise, synthesize_datadir

    data_dir = Path(data_dir)
    utts = [SpokenUtterance(u.utt_id, u.text, u.condition, u.voice, u.speed, u.pitch,
                            u.trailing_silence, u.pause) for u in plan]
    synthesize_datadir(utts, data_dir, wav_dir, sample_rate=sample_rate, num_workers=num_workers)
    wav = read_kaldi_map(data_dir / "wav.scp")
    turns = {}
    for u in plan:
        end = speech_end_seconds(wav[u.utt_id])
        if u.noise != "clean":
            add_noise(wav[u.utt_id], u.noise, u.snr_db, end,
                      seed=(seed % (1 << 32), zlib.crc32(u.utt_id.encode("utf-8"))))
        turns[u.utt_id] = (u.label, end)
    write_turn_info(data_dir / "turn_info", turns)
    return data_dir
