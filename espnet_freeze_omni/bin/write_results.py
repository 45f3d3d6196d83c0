"""Gather every metric.json under a score root into results.json and RESULTS.md.

    python -m espnet_freeze_omni.bin.write_results --score_root exp/scores \
        --results_json exp/results.json --results_md RESULTS.md \
        [--test_sets "test qa_test"] [--exp_dir exp] [--title RESULTS]

Top-level figures come from the first of --test_sets that has them; RESULTS.md holds the
environment (date, OS, python, torch, espnet, transformers, git commit) and one table per
test set.
"""
import argparse
import json
import sys

from espnet_freeze_omni.scoring.results import METRICS, write_results


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--score_root", required=True)
    parser.add_argument("--results_json", required=True)
    parser.add_argument("--results_md", required=True)
    parser.add_argument("--test_sets", default="", help="space-separated, primary first")
    parser.add_argument("--exp_dir", default="exp", help="shown as the section title")
    parser.add_argument("--title", default="RESULTS")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    results = write_results(args.score_root, args.results_json, args.results_md,
                            args.test_sets.split(), args.title, args.exp_dir)
    print(json.dumps({k: results[k] for k in METRICS}, indent=None))
    print(f"wrote {args.results_json} and {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
