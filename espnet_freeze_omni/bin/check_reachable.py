"""Exit 0 when a TCP connection to HOST:PORT opens within the timeout, 1 otherwise.

    python -m espnet_freeze_omni.bin.check_reachable --host huggingface.co [--port 443]
        [--timeout 5]

The driver's stage 18 asks it before an upload, so that an offline machine gets a message
saying what to run later instead of the hub client's traceback.
"""
import argparse
import socket
import sys


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    try:
        socket.create_connection((args.host, args.port), timeout=args.timeout).close()
    except OSError as e:
        print(f"check_reachable: {args.host}:{args.port} cannot be reached ({e})", file=sys.stderr)
        return 1
    print(f"check_reachable: {args.host}:{args.port} is reachable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
