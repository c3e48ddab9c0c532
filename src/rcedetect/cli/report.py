"""`rcedetect report RUN`: render RUN/report.md, RUN/report.html and RUN/figures/*.png from the JSON."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="render the Markdown/HTML report of a reproduction run from its JSON cells",
        description="Reads RUN/run.json and RUN/cells/*.json only (no model is loaded) and writes "
                    "RUN/report.md, RUN/report.html (self-contained) and RUN/figures/*.png.")
    parser.add_argument("run_dir", metavar="RUN", help="the --out folder of 'rcedetect reproduce' / 'rcedetect demo'")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import validate
    from ..reproduce import render_report

    validate.input_folder(args.run_dir, "RUN", what="--out folder of 'rcedetect reproduce'")
    paths = render_report(args.run_dir)
    print(f"report: {paths['markdown']} and {paths['html']} ({len(paths['figures'])} figures in "
          f"{args.run_dir}/figures)")
    return 0
