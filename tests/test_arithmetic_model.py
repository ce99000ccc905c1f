"""GTS and Graph2Tree: the batched decoder computes exactly what the public code's node-by-node walk computes."""

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smcbench.sparsity import Sparsifier
from smcbench.sparsity.selection import select_prunable
from smcbench.tasks.arithmetic.expressions import evaluate_prefix
from smcbench.tasks.arithmetic.model import MathSolver, RandomEmbedder, SolverConfig
from smcbench.tasks.arithmetic.task import Features, collate
from smcbench.tasks.arithmetic.trees import OutputVocab, tree_shape

N_OPS, N_CONST = 4, 2


def random_prefix(rng: random.Random, leaves: int, max_ops: int) -> list[int]:
    """A random binary expression tree in prefix order over output ids (ops < N_OPS, then `leaves` leaves)."""
    if max_ops == 0 or rng.random() < 0.35:
        return [N_OPS + rng.randrange(leaves)]
    left_ops = rng.randrange(max_ops)
    right = random_prefix(rng, leaves, max_ops - 1 - left_ops)
    return [rng.randrange(N_OPS), *random_prefix(rng, leaves, left_ops), *right]


def tiny_solver(architecture: str = "gts", seed: int = 0) -> MathSolver:
    torch.manual_seed(seed)
    cfg = SolverConfig(architecture, N_OPS, N_CONST, hidden=32, beam=3, max_output=15)
    return MathSolver(RandomEmbedder(60, 24), 24, cfg).eval()


def random_batch(rng: random.Random, size: int, graphs: bool) -> tuple[list[Features], dict]:
    feats = []
    for _ in range(size):
        length = rng.randint(4, 12)
        ids = [rng.randrange(1, 60) for _ in range(length)]
        count = rng.randint(1, 4)
        pos = rng.sample(range(length), count)
        target = random_prefix(rng, N_CONST + count, rng.randint(0, 5))
        edges = ([(rng.randrange(length), rng.randrange(length)) for _ in range(3)], [(pos[0], pos[-1])])
        feats.append(Features(None, ids, pos, target, tree_shape(target, N_OPS), edges))
    return feats, collate(feats, 0, graphs)


def reference_walk(model: MathSolver, batch: dict, i: int, target: list[int] | None, max_len: int = 15):
    """The public GTS loop for one problem: node stack, embedding stack, merges as leaves close subtrees. With a
    target: teacher forcing, returns the logits; without: greedy decoding, returns the tokens."""
    one = {k: v[i:i + 1] for k, v in batch.items() if k in ("input_ids", "attention_mask", "num_pos", "num_count",
                                                           "graphs")}
    n = int(one["attention_mask"].sum())
    one = {k: (v[:, :n] if k in ("input_ids", "attention_mask") else v) for k, v in one.items()}
    if "graphs" in one:
        one["graphs"] = one["graphs"][:, :, :n, :n]
    enc = model.encode(**one)
    goals, stack, left, logits, tokens = [enc["problem"][0]], [], None, [], []
    steps = target if target is not None else range(max_len)
    for step in steps:
        if not goals:
            break
        goal = goals.pop()
        cur = model.predict.current(goal[None], None if left is None else left[None])
        ctx = model.predict.context(cur, enc["keys"], enc["outputs"], enc["seq_mask"])
        out = model.predict.logits(cur, ctx, enc["leaf_keys"], enc["leaf_mask"])
        logits.append(out[0])
        tok = step if target is not None else int(out[0].argmax())
        tokens.append(tok)
        if tok < N_OPS:
            lg, rg = model.generate(cur, ctx, torch.tensor([tok]))
            goals += [rg[0], lg[0]]
            stack.append((model.generate.embeddings.weight[tok], False))
        else:
            c = enc["leaves"][0, tok - N_OPS]
            while stack and stack[-1][1]:
                sub, op = stack.pop()[0], stack.pop()[0]
                c = model.merge(op[None], sub[None], c[None])[0]
            stack.append((c, True))
        left = stack[-1][0] if stack and stack[-1][1] else None
    return torch.stack(logits) if target is not None else tokens


@pytest.mark.parametrize("architecture", ["gts", "graph2tree"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_teacher_forcing_equals_the_node_by_node_walk(architecture, seed):
    rng = random.Random(seed)
    model = tiny_solver(architecture, seed)
    feats, batch = random_batch(rng, 6, architecture == "graph2tree")
    with torch.no_grad():
        logits = model(**batch).logits
        expected = torch.cat([reference_walk(model, batch, i, f.target) for i, f in enumerate(feats)])
    # Padding columns of the leaf table differ in width only: compare the columns each problem has.
    at = 0
    for f in feats:
        width = N_OPS + N_CONST + len(f.num_pos)
        rows = slice(at, at + len(f.target))
        assert torch.allclose(logits[rows, :width], expected[rows, :width], atol=1e-5)
        at += len(f.target)


def test_teacher_forcing_loss_has_gradients_everywhere_it_should():
    rng = random.Random(0)
    model = tiny_solver().train()
    _, batch = random_batch(rng, 8, False)
    model(**batch).loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("predict", "generate.generate", "encoder", "embedder")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_one_is_greedy_decoding_and_beams_give_valid_expressions(seed):
    rng = random.Random(seed)
    model = tiny_solver("gts", seed)
    feats, batch = random_batch(rng, 5, False)
    greedy = model.decode(**batch, beam=1)
    for i in range(len(feats)):
        assert greedy[i] == reference_walk(model, batch, i, None)
    for tokens, f in zip(model.decode(**batch, beam=3), feats, strict=True):
        if len(tokens) < model.cfg.max_output:  # a finished tree
            shape = tree_shape(tokens, N_OPS)
            assert shape.parent[0] == -1
            assert all(t < N_OPS + N_CONST + len(f.num_pos) for t in tokens)


@given(st.integers(0, 10_000))
def test_tree_shape_is_consistent(seed):
    rng = random.Random(seed)
    ids = random_prefix(rng, 5, rng.randint(0, 8))
    shape = tree_shape(ids, N_OPS)
    for pos, tok in enumerate(ids):
        if tok < N_OPS:
            lc, rc = shape.left_child[pos], shape.right_child[pos]
            assert shape.parent[lc] == shape.parent[rc] == pos and pos < lc < rc
            assert shape.is_right[rc] and not shape.is_right[lc] and shape.left_sibling[rc] == lc
            assert shape.height[pos] == 1 + max(shape.height[lc], shape.height[rc])
            assert shape.depth[lc] == shape.depth[pos] + 1
        else:
            assert shape.left_child[pos] == -1 and shape.height[pos] == 0
    assert evaluate_prefix(["+" if t < N_OPS else "number0" for t in ids], [1.0]) is not None


def test_tree_shape_rejects_incomplete_or_overlong_expressions():
    from smcbench.errors import SmcBenchError

    with pytest.raises(SmcBenchError, match="incomplete"):
        tree_shape([0, N_OPS], N_OPS)
    with pytest.raises(SmcBenchError, match="after its end"):
        tree_shape([N_OPS, N_OPS], N_OPS)


def test_output_vocab_round_trip_and_unknown_constants():
    vocab = OutputVocab.from_equations([["+", "number0", "1.0"], ["*", "number1", "100.0"], ["-", "1.0", "number0"]])
    assert vocab.ops == ("+", "-", "*") and vocab.constants == ("1.0", "100.0")
    eq = ["*", "+", "number2", "1.0", "100.0"]
    assert vocab.decode(vocab.encode(eq)) == eq
    assert vocab.encode(["+", "number0", "3.14"]) is None  # a constant training never showed: not generable


def test_gru_and_decoder_weights_are_prunable_and_stay_pruned():
    model = tiny_solver().train()
    selected = select_prunable(model, "all")
    assert "encoder.rnn.weight_hh_l0_reverse" in selected and "merge.merge.weight" in selected
    assert not any("bias" in n for n in selected)
    sp = Sparsifier(model, "all")
    sp.prune(0.5, "magnitude", "global")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp.attach_optimizer(opt)
    _, batch = random_batch(random.Random(3), 4, False)
    for _ in range(3):
        model(**batch).loss.backward()
        sp.mask_gradients()
        opt.step()
        sp.after_step()
        opt.zero_grad()
    assert all(int(p[~sp.masks[n]].count_nonzero()) == 0 for n, p in selected.items())


@pytest.mark.parametrize("layers", [1, 2])
def test_batch_gru_matches_nn_gru_outputs_and_gradients(layers):
    from torch import nn

    from smcbench.tasks.arithmetic.gru import BatchGRU

    torch.manual_seed(layers)
    lengths = torch.tensor([7, 5, 2, 6])
    x = torch.randn(4, 7, 6, requires_grad=True)
    ref = nn.GRU(6, 5, layers, bidirectional=True, batch_first=True)
    ours = BatchGRU(6, 5, layers)
    ours.load_state_dict(ref.state_dict())  # same parameters, same names
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=7)
    weights = torch.randn(4, 7, 10)
    (expected * weights).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    ref_x, x.grad = x.grad.clone(), None
    got = ours(x, lengths)
    (got * weights).sum().backward()
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(x.grad, ref_x, atol=1e-5)
    for n, p in ours.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-5), n


def test_encoder_preset_keeps_embeddings_dense_and_prunes_the_graph_transformer():
    names = set(select_prunable(tiny_solver("graph2tree"), "encoder"))
    assert "encoder.graph.convolutions.0.gc1.weight" in names and "encoder.rnn.weight_ih_l1" in names
    assert not any(n.startswith("embedder") or n == "predict.constants.weight" for n in names)
