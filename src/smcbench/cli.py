"""The `smc-bench` command line: thin wrappers over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from smcbench.errors import SmcBenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark sparse neural network algorithms.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Performance benchmarks: figures and ratios, not tests.")
app.add_typer(bench_app, name="bench")


def fail(message: str) -> None:
    """One line on stderr, exit status 2: bad input is never a traceback."""
    typer.echo(f"smc-bench: error: {message}", err=True)
    sys.exit(2)


@app.command()
def demo(
    model: str = typer.Option("minilm", help="Model name, hub id or local folder."),
    sparsity: float = typer.Option(0.5, help="Target sparsity."),
) -> None:
    """Prune a pretrained model with several methods and print the layerwise sparsity of each."""
    from smcbench import demo as demo_module

    typer.echo(demo_module.run(model, sparsity))


@app.command()
def prune(
    model: str = typer.Option("minilm", help="Model name, hub id or local folder."),
    sparsity: float = typer.Option(..., help="Fraction of selected weights to prune, in [0, 1)."),
    score: str = typer.Option("magnitude", help="magnitude or random (data-free scores)."),
    allocation: str = typer.Option("global", help="global, uniform, erk, or N:M such as 2:4."),
    preset: str = typer.Option("all", help="all (embeddings and heads too) or encoder."),
    seed: int = typer.Option(0, help="Seed of random scores."),
    masks_out: Path | None = typer.Option(None, "--masks-out", help="Write the masks here (safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the layerwise sparsity as JSON."),
) -> None:
    """Prune a pretrained model once and report its layerwise sparsity."""
    from smcbench.models import load_pretrained
    from smcbench.sparsity import Sparsifier, format_table, make_score
    from smcbench.sparsity.report import as_records

    if score not in ("magnitude", "random"):
        fail(f"score {score!r} needs training data; `prune` takes magnitude or random")
    net = load_pretrained(model)
    sp = Sparsifier(net, preset)
    sp.prune(sparsity, make_score(score, seed=seed) if score == "random" else score, allocation)
    if masks_out is not None:
        sp.save_masks(masks_out)
    if as_json:
        typer.echo(json.dumps({"overall": sp.sparsity(), "layers": as_records(sp.layers())}))
    else:
        typer.echo(format_table(sp.layers(), f"{model}: {score} / {allocation} at {sparsity}"))


@bench_app.command("threshold")
def bench_threshold(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    methods: str = typer.Option(
        "engine,torch_prune,concat_topk,floor,read_only", help="Comma-separated subset to run."
    ),
    layers: int = typer.Option(24, help="Transformer layers (24: RoBERTa-large)."),
    hidden: int = typer.Option(1024, help="Hidden size."),
    vocab: int = typer.Option(50265, help="Embedding rows."),
) -> None:
    """Global magnitude pruning of a RoBERTa-large-shaped weight set: engine vs torch prune vs cat+topk."""
    from smcbench.bench import threshold

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in threshold.METHODS]
    if unknown:
        fail(f"unknown method(s) {unknown}: choose from {', '.join(threshold.METHODS)}")
    out = threshold.run(chosen, layers, hidden, vocab)
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"global magnitude pruning to 50 % of {out['params']:,} fp32 weights (each method in its own process)")
    for key, label in [("engine", "smc-bench engine"), ("torch_prune", "torch prune.global_unstructured"),
                       ("concat_topk", "torch.cat + topk (official)")]:
        if f"{key}_s" in out:
            typer.echo(f"  {label:<32} {out[f'{key}_s']:8.2f} s  {out[f'{key}_extra_mb']:8.0f} MB extra")
    for key, label in [("floor_s", "floor: |w| of every weight"), ("read_only_s", "plain read of every weight")]:
        if key in out:
            typer.echo(f"  {label:<32} {out[key]:8.2f} s")
    if "engine_s" in out:
        typer.echo(f"  engine exact count: {out['engine_exact']}")
        for key in ("floor_s", "read_only_s", "torch_prune_s", "concat_topk_s"):
            if key in out:
                typer.echo(f"  engine / {key[:-2]}: {out['engine_s'] / out[key]:.2f}x")


@bench_app.command("overhead")
def bench_overhead(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model: str = typer.Option("minilm", help="Model name, hub id or local folder."),
    steps: int = typer.Option(10, help="Timed steps of each (after 2 warm-up steps)."),
    sparsity: float = typer.Option(0.5, help="Sparsity of the masked model."),
) -> None:
    """Median training-step time with masks enforced vs dense (MiniLM multiple choice)."""
    from smcbench.bench import overhead

    out = overhead.run(model, steps=steps, sparsity=sparsity)
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"training step, {model}, 8 x 5 x 64 tokens, fused AdamW, median of {steps} interleaved steps")
    typer.echo(f"  dense   {out['dense_step_s']:.3f} s")
    typer.echo(f"  masked  {out['masked_step_s']:.3f} s  (sparsity {out['sparsity']:.3f}, "
               f"pruned weights nonzero after training: {out['pruned_weights_nonzero']})")
    typer.echo(f"  ratio   {out['ratio']:.3f}x")


def main() -> None:
    try:
        app()
    except SmcBenchError as err:
        fail(str(err))
    except OSError as err:  # unreadable input, unwritable output
        fail(f"{err.strerror or err} ({err.filename})" if err.filename else str(err))


if __name__ == "__main__":
    main()
