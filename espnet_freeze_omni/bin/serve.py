"""Serve a packed Freeze-Omni model: a browser demo at `/` and an OpenAI-Realtime websocket.

    python -m espnet_freeze_omni.bin.serve --model_file exp/packed/freeze_omni_model.zip \
        [--llm_path DIR] --port 8765 [--host 127.0.0.1] [--max_sessions 8] [--device cpu]
        [--replicas 1]

docs/serving.md describes the protocol and the limits.
"""
from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from espnet_freeze_omni.serve.server import add_arguments, serve


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(get_parser().parse_args(cmd))


if __name__ == "__main__":
    main()
