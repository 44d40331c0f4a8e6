"""What pricing costs the poll loop: the poll benchmark without and with a price file, in one run.

Every job finishes at its first answer (nginx's fixed COMPLETED speech body), so each poll also
prices one job: a look-up in a 60-entry price file (exact names and regular expressions, the
matching one last) and the cost fields written with the job's row.
"""

from __future__ import annotations

from pathlib import Path

from bench.benchmarks import Figures, poll_throughput


def price_file(entries: int = 60) -> str:
    """Entries that do not match (exact and regex, every kind) before the one that does."""
    lines = ["prices:"]
    for i in range(entries - 1):
        kind = ("chat", "images", "speech")[i % 3]
        unit = {"chat": "per_million_prompt_tokens", "images": "per_image", "speech": "per_speech"}[kind]
        model = f"model: other-{i}" if i % 2 else f"model_regex: 'other-{i}-.*'"
        lines.append(f"  - {{kind: {kind}, {model}, effective_from: 2020-01-0{1 + i % 9}, {unit}: {i}}}")
    lines.append("  - {kind: speech, model_regex: 'Chatter.*', effective_from: 2020-01-01, per_speech: 0.001}")
    return "\n".join(lines) + "\n"


def priced_polls(workdir: Path, ids: int, wrk_seconds: int = 5) -> Figures:
    """Polls per second and CPU per poll without and with a price file, each also as a share of
    wrk's rate against the same nginx in the same run."""
    for run in ("plain", "priced"):
        (workdir / run).mkdir(parents=True, exist_ok=True)
    plain = poll_throughput(workdir / "plain", ids, wrk_seconds)
    (workdir / "priced" / "prices.yaml").write_text(price_file())
    priced = poll_throughput(workdir / "priced", ids, wrk_seconds, "pricing: {file: prices.yaml}")
    return {"polls_per_second_plain": plain["polls_per_second"], "polls_per_second_priced": priced["polls_per_second"],
            "ratio_to_wrk_plain": plain["ratio_to_wrk"], "ratio_to_wrk_priced": priced["ratio_to_wrk"],
            "rate_ratio": priced["polls_per_second"] / plain["polls_per_second"],
            "cpu_us_per_poll_plain": plain["cpu_us_per_poll"], "cpu_us_per_poll_priced": priced["cpu_us_per_poll"],
            "cpu_ratio": priced["cpu_us_per_poll"] / plain["cpu_us_per_poll"]}
