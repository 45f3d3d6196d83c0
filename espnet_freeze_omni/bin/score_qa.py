"""Score a dialogue test set: QA accuracy by answer containment, or turn-end detection.

Answers (SPEC §4 containment scorer):
    python -m espnet_freeze_omni.bin.score_qa --refs data/local/world/qa_test_refs.jsonl \
        --hyp exp/decode/qa_test/speech_in/text --out_dir exp/scores/qa_test/qa_acc_speech_in \
        [--metric qa_acc_speech_in --test_set qa_test]

Turn ends (event precision/recall/F1, see scoring/turn_end.py):
    python -m espnet_freeze_omni.bin.score_qa --ref_turn_info data/qa_test/turn_info \
        --hyp_turn_info exp/decode/qa_test/turn/turn_info --out_dir exp/scores/qa_test/turn_end_f1 \
        [--early_tolerance 0.16] [--late_tolerance 1.0] [--metric turn_end_f1 --test_set qa_test]

--hyp is a Kaldi text file (`id response...`) or JSON lines ({"id", "response"}).
Outputs: result.json, per_item.jsonl (per_utt.txt for turn ends) and metric.json.
"""
import argparse
import json
import sys
from pathlib import Path

from espnet2.utils.types import str_or_none

from espnet_freeze_omni.data.kaldi_table import read_turn_info
from espnet_freeze_omni.scoring import qa_containment, turn_end
from espnet_freeze_omni.scoring.results import METRICS, write_metric


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=str_or_none, default=None,
                        help='reference answers, JSON lines {"id", "question", "answers"}')
    parser.add_argument("--hyp", type=str_or_none, default=None, help="responses")
    parser.add_argument("--ref_turn_info", type=str_or_none, default=None)
    parser.add_argument("--hyp_turn_info", type=str_or_none, default=None)
    parser.add_argument("--early_tolerance", type=float, default=0.16,
                        help="seconds a response may start before the speech end")
    parser.add_argument("--late_tolerance", type=float, default=1.0,
                        help="seconds a response may start after the speech end")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--metric", type=str_or_none, default=None, choices=[None, *METRICS])
    parser.add_argument("--test_set", type=str_or_none, default=None)
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    if args.metric and not args.test_set:
        raise SystemExit("score_qa: --metric needs --test_set")
    out_dir = Path(args.out_dir)
    if args.refs and args.hyp:
        score = qa_containment.score_qa(qa_containment.load_references(args.refs),
                                        qa_containment.load_responses(args.hyp))
        qa_containment.write_qa_score(score, out_dir)
        print(f"QA accuracy {score.accuracy:.2f}% ({score.num_correct}/{score.num_items}, "
              f"{score.num_missing} without response); scorer: {score.scorer_name}")
        if args.metric:
            write_metric(out_dir, args.metric, args.test_set, score.accuracy, score.scorer,
                         score.scorer_name, score.summary())
    elif args.ref_turn_info and args.hyp_turn_info:
        score = turn_end.score_turn_end(read_turn_info(args.ref_turn_info),
                                        read_turn_info(args.hyp_turn_info),
                                        args.early_tolerance, args.late_tolerance)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "result.json").write_text(json.dumps(score.summary(), indent=2) + "\n")
        (out_dir / "per_utt.txt").write_text(
            "".join(f"{u} {o}\n" for u, o in score.outcomes.items()))
        print(f"turn end: precision {score.precision:.2f}% recall {score.recall:.2f}% "
              f"F1 {score.f1:.2f}% (window -{args.early_tolerance}/+{args.late_tolerance} s, "
              f"side talk ignored {score.not_addressed_ignored:.2f}%)")
        if args.metric:
            name = (f"event F1 of respond-now decisions, hit within -{args.early_tolerance}/"
                    f"+{args.late_tolerance} s of the speech end")
            write_metric(out_dir, args.metric, args.test_set, score.f1, score.scorer, name,
                         score.summary())
    else:
        raise SystemExit("score_qa: give --refs and --hyp, or --ref_turn_info and "
                         "--hyp_turn_info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
