"""GTS (Xie & Sun 2019) and Graph2Tree (Zhang et al. 2020) in PyTorch, batched.

Both: a pretrained transformer gives contextual input embeddings (as SMC-Bench: RoBERTa; MiniLM offline), a
bidirectional GRU encodes the problem, and the goal-driven tree decoder generates the prefix equation. Graph2Tree adds
a graph transformer over the GRU outputs (quantity-cell and quantity-comparison graphs).

The decoder's layers keep the names of the public GTS code (`predict`, `generate`, `merge`, `concat_l`, ...) so
layerwise sparsity reads like the paper's figures. What differs is the schedule of the work, not the model:
- training (teacher forcing) knows every target tree, so goals are computed one tree depth at a time and subtree
  embeddings one tree height at a time, each a single batched call over all problems of the batch;
- attention and number scoring split their first Linear into the part applied to the query and the part applied
  to the keys, and project the keys once per problem instead of once per decoding step (the same function);
- beam search decodes every problem and beam of a batch together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smcbench.tasks.arithmetic.gru import BatchGRU

NEG = -1e12  # the public code's mask value (kept: -inf makes an all-masked row NaN)


@dataclass(frozen=True)
class SolverConfig:
    architecture: str  # "gts" or "graph2tree"
    num_ops: int
    num_constants: int
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.5
    graph_dropout: float = 0.3
    beam: int = 5
    max_output: int = 45


@dataclass
class SolverOutput:
    loss: Tensor
    logits: Tensor  # [target tokens of the batch, ops + leaves]


class RandomEmbedder(nn.Module):
    """Word embeddings trained from scratch (the public code's default `random`), same interface as an HF model."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.dim = dim

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)


class Attention(nn.Module):
    """Additive attention of a query over a sequence: energy(tanh(proj([query; key])))."""

    def __init__(self, query: int, key: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.query_size = query
        self.proj = nn.Linear(query + key, hidden)
        self.energy = nn.Linear(hidden, 1, bias=bias)

    def keys(self, keys: Tensor) -> Tensor:
        """Key half of `proj`, once per problem: [B, S, key] -> [B, S, hidden]."""
        return F.linear(keys, self.proj.weight[:, self.query_size:])

    def energies(self, query: Tensor, projected_keys: Tensor, mask: Tensor) -> Tensor:
        """query [n, q]; projected_keys and mask already gathered per query row: [n, S, h], [n, S] (True = off)."""
        q = F.linear(query, self.proj.weight[:, :self.query_size], self.proj.bias)
        e = self.energy(torch.tanh(q.unsqueeze(1) + projected_keys)).squeeze(-1)
        return e.masked_fill(mask, NEG)


class Predict(nn.Module):
    """Node goal -> (gated current node, context over the problem, operator logits, leaf scores)."""

    def __init__(self, hidden: int, num_ops: int, num_constants: int, dropout: float) -> None:
        super().__init__()
        self.concat_l = nn.Linear(hidden, hidden)
        self.concat_lg = nn.Linear(hidden, hidden)
        self.concat_r = nn.Linear(2 * hidden, hidden)
        self.concat_rg = nn.Linear(2 * hidden, hidden)
        self.ops = nn.Linear(2 * hidden, num_ops)
        self.attention = Attention(hidden, hidden, hidden)
        self.number_scorer = Attention(2 * hidden, hidden, hidden, bias=False)
        # Learned embeddings of the constants the decoder may generate (1, 100, 0.01, ...): leaves like numbers.
        self.constants = nn.Embedding(max(1, num_constants), hidden)
        self.num_constants = num_constants
        self.dropout = nn.Dropout(dropout)

    def current(self, goal: Tensor, left_subtree: Tensor | None) -> Tensor:
        if left_subtree is None:
            g = self.dropout(goal)
            return torch.tanh(self.concat_l(g)) * torch.sigmoid(self.concat_lg(g))
        x = torch.cat((self.dropout(left_subtree), self.dropout(goal)), 1)
        return torch.tanh(self.concat_r(x)) * torch.sigmoid(self.concat_rg(x))

    def context(self, current: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        weights = torch.softmax(self.attention.energies(self.dropout(current), keys, mask), dim=1)
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)

    def logits(self, current: Tensor, context: Tensor, leaf_keys: Tensor, leaf_mask: Tensor) -> Tensor:
        leaf_input = self.dropout(torch.cat((current, context), 1))
        return torch.cat((self.ops(leaf_input), self.number_scorer.energies(leaf_input, leaf_keys, leaf_mask)), 1)


class Generate(nn.Module):
    """An operator node's (current node, context, operator) -> left and right child goals."""

    def __init__(self, hidden: int, num_ops: int, dropout: float) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(num_ops, hidden)
        size = 2 * hidden + hidden
        self.generate_l, self.generate_lg = nn.Linear(size, hidden), nn.Linear(size, hidden)
        self.generate_r, self.generate_rg = nn.Linear(size, hidden), nn.Linear(size, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, current: Tensor, context: Tensor, op: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat((self.dropout(current), self.dropout(context), self.dropout(self.embeddings(op))), 1)
        left = torch.tanh(self.generate_l(x)) * torch.sigmoid(self.generate_lg(x))
        right = torch.tanh(self.generate_r(x)) * torch.sigmoid(self.generate_rg(x))
        return left, right


class Merge(nn.Module):
    """(operator embedding, left subtree, right subtree) -> the subtree's embedding."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.merge = nn.Linear(3 * hidden, hidden)
        self.merge_g = nn.Linear(3 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, op_embedding: Tensor, left: Tensor, right: Tensor) -> Tensor:
        x = torch.cat((self.dropout(op_embedding), self.dropout(left), self.dropout(right)), 1)
        return torch.tanh(self.merge(x)) * torch.sigmoid(self.merge_g(x))


class GraphHead(nn.Module):
    """Two graph convolutions (Kipf & Welling) over one adjacency: relu(A x W1) -> dropout -> A h W2."""

    def __init__(self, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.gc1 = nn.Linear(hidden, hidden)
        self.gc2 = nn.Linear(hidden, out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        h = self.dropout(F.relu(torch.bmm(adjacency, self.gc1(x))))
        return torch.bmm(adjacency, self.gc2(h))


class GraphModule(nn.Module):
    """Graph2Tree's graph transformer: four heads (two per graph), concatenated, layer norm and residual, then a
    position-wise feed-forward with residual."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.convolutions = nn.ModuleList(GraphHead(hidden, hidden // 4, dropout) for _ in range(4))
        self.norm = nn.LayerNorm(4 * (hidden // 4))
        self.feed_forward_1 = nn.Linear(hidden, hidden)
        self.feed_forward_2 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, graphs: Tensor) -> Tensor:
        """x [B, S, H]; graphs [B, 2, S, S]: quantity cell graph, quantity comparison graph."""
        adj = (graphs[:, 0], graphs[:, 0], graphs[:, 1], graphs[:, 1])
        g = self.norm(torch.cat([head(x, a) for head, a in zip(self.convolutions, adj, strict=True)], 2)) + x
        return self.feed_forward_2(self.dropout(F.relu(self.feed_forward_1(g)))) + g


class Encoder(nn.Module):
    def __init__(self, embedding_size: int, cfg: SolverConfig) -> None:
        super().__init__()
        self.rnn = BatchGRU(embedding_size, cfg.hidden, cfg.layers, dropout=cfg.dropout)
        self.graph = GraphModule(cfg.hidden, cfg.graph_dropout) if cfg.architecture == "graph2tree" else None
        self.hidden = cfg.hidden

    def forward(self, embedded: Tensor, lengths: Tensor, graphs: Tensor | None) -> tuple[Tensor, Tensor]:
        out = self.rnn(embedded, lengths)
        h = self.hidden
        rows = torch.arange(out.size(0), device=out.device)
        # The forward direction's last real step and the backward direction's first step. (The public code took
        # the forward direction at the batch's last padded step, a zero vector for every shorter problem.)
        problem = out[rows, lengths - 1, :h] + out[:, 0, h:]
        out = out[:, :, :h] + out[:, :, h:]
        if self.graph is not None:
            out = self.graph(out, graphs)
        return out, problem


class MathSolver(nn.Module):
    """embedder -> encoder (GRU, optionally graph) -> tree decoder (predict, generate, merge)."""

    def __init__(self, embedder: nn.Module, embedding_size: int, cfg: SolverConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedder = embedder
        self.embedding_dropout = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(embedding_size, cfg)
        self.predict = Predict(cfg.hidden, cfg.num_ops, cfg.num_constants, cfg.dropout)
        self.generate = Generate(cfg.hidden, cfg.num_ops, cfg.dropout)
        self.merge = Merge(cfg.hidden, cfg.dropout)

    # -- shared by training and decoding -------------------------------------------------------------------

    def _embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if isinstance(self.embedder, RandomEmbedder):
            emb = self.embedder(input_ids, attention_mask)
        else:
            emb = self.embedder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.embedding_dropout(emb)

    def encode(self, input_ids: Tensor, attention_mask: Tensor, num_pos: Tensor, num_count: Tensor,
               graphs: Tensor | None = None) -> dict[str, Tensor]:
        lengths = attention_mask.sum(1)
        out, problem = self.encoder(self._embed(input_ids, attention_mask), lengths, graphs)
        batch = out.size(0)
        numbers = out[torch.arange(batch, device=out.device).unsqueeze(1), num_pos]  # [B, N, H]
        constants = self.predict.constants.weight[: self.cfg.num_constants].unsqueeze(0).expand(batch, -1, -1)
        leaves = torch.cat((constants, numbers), 1)  # [B, C + N, H]
        slots = torch.arange(num_pos.size(1), device=out.device).unsqueeze(0)
        leaf_mask = torch.cat((torch.zeros(batch, self.cfg.num_constants, dtype=torch.bool, device=out.device),
                               slots >= num_count.unsqueeze(1)), 1)
        return {
            "outputs": out, "problem": problem, "seq_mask": attention_mask == 0, "leaves": leaves,
            "leaf_mask": leaf_mask, "keys": self.predict.attention.keys(out),
            "leaf_keys": self.predict.number_scorer.keys(self.predict.dropout(leaves)),
        }

    # -- training: teacher forcing, batched by tree depth and height -----------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor, num_pos: Tensor, num_count: Tensor,
                target: Tensor, parent: Tensor, is_right: Tensor, left_sibling: Tensor, left_child: Tensor,
                right_child: Tensor, depth: Tensor, height: Tensor, graphs: Tensor | None = None) -> SolverOutput:
        enc = self.encode(input_ids, attention_mask, num_pos, num_count, graphs)
        batch, length = target.shape
        hidden = self.cfg.hidden
        device = target.device
        valid = target.flatten() >= 0
        flat_target = target.flatten().clamp_min(0)
        example = torch.arange(batch, device=device).repeat_interleave(length)
        base = example * length  # flat index of each row's position 0
        is_op = valid & (flat_target < self.cfg.num_ops)
        leaves = enc["leaves"]

        # Bottom-up: every subtree's embedding (leaves: their number or constant; operators: merged children).
        leaf_rows = (valid & ~is_op).nonzero().squeeze(1)
        subtree = torch.zeros(batch * length, hidden, device=device, dtype=leaves.dtype)
        subtree = subtree.index_put((leaf_rows,),
                                    leaves[example[leaf_rows], flat_target[leaf_rows] - self.cfg.num_ops])
        flat_height = height.flatten()
        # Only left subtrees are ever read (by their right siblings): merge just those.
        needed = torch.zeros(batch * length, dtype=torch.bool, device=device)
        sib = left_sibling.flatten()
        needed[(base + sib)[sib >= 0]] = True
        needed = self._with_descendants(needed, left_child.flatten(), right_child.flatten(), base, flat_height)
        for h in range(1, int(flat_height.max()) + 1 if valid.any() else 1):
            rows = (needed & (flat_height == h)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            merged = self.merge(self.generate.embeddings(flat_target[rows]),
                                subtree[base[rows] + left_child.flatten()[rows]],
                                subtree[base[rows] + right_child.flatten()[rows]])
            subtree = subtree.index_put((rows,), merged)

        # Top-down: goals, current nodes, contexts, one batched step per depth.
        current = torch.zeros(batch * length, hidden, device=device, dtype=leaves.dtype)
        context = torch.zeros_like(current)
        left_goal = torch.zeros_like(current)
        right_goal = torch.zeros_like(current)
        flat_depth, flat_parent = depth.flatten(), parent.flatten()
        flat_right, flat_sib = is_right.flatten(), left_sibling.flatten()
        for d in range(int(flat_depth[valid].max()) + 1 if valid.any() else 0):
            rows = (valid & (flat_depth == d)).nonzero().squeeze(1)
            if d == 0:
                goal = enc["problem"][example[rows]]
            else:
                p = base[rows] + flat_parent[rows]
                goal = torch.where(flat_right[rows].unsqueeze(1), right_goal[p], left_goal[p])
            right = flat_right[rows]
            cur = torch.zeros(rows.numel(), hidden, device=device, dtype=goal.dtype)
            r_idx, l_idx = right.nonzero().squeeze(1), (~right).nonzero().squeeze(1)
            if l_idx.numel():
                cur = cur.index_put((l_idx,), self.predict.current(goal[l_idx], None))
            if r_idx.numel():
                sib_rows = base[rows[r_idx]] + flat_sib[rows[r_idx]]
                cur = cur.index_put((r_idx,), self.predict.current(goal[r_idx], subtree[sib_rows]))
            ex = example[rows]
            ctx = self.predict.context(cur, enc["keys"][ex], enc["outputs"][ex], enc["seq_mask"][ex])
            current = current.index_put((rows,), cur)
            context = context.index_put((rows,), ctx)
            op_sel = is_op[rows].nonzero().squeeze(1)
            if op_sel.numel():
                lg, rg = self.generate(cur[op_sel], ctx[op_sel], flat_target[rows[op_sel]])
                left_goal = left_goal.index_put((rows[op_sel],), lg)
                right_goal = right_goal.index_put((rows[op_sel],), rg)

        rows = valid.nonzero().squeeze(1)
        ex = example[rows]
        logits = self.predict.logits(current[rows], context[rows], enc["leaf_keys"][ex], enc["leaf_mask"][ex])
        loss = F.cross_entropy(logits, flat_target[rows])
        return SolverOutput(loss, logits)

    @staticmethod
    def _with_descendants(needed: Tensor, left: Tensor, right: Tensor, base: Tensor, height: Tensor) -> Tensor:
        """Mark every descendant of a marked node (top-down by height: parents are higher than children)."""
        for h in range(int(height.max()) if height.numel() else 0, 0, -1):
            rows = (needed & (height == h)).nonzero().squeeze(1)
            needed[base[rows] + left[rows]] = True
            needed[base[rows] + right[rows]] = True
        return needed

    # -- decoding: beam search over every problem and beam of a batch at once ---------------------------------

    @torch.no_grad()
    def decode(self, input_ids: Tensor, attention_mask: Tensor, num_pos: Tensor, num_count: Tensor,
               graphs: Tensor | None = None, beam: int | None = None, **_: Tensor) -> list[list[int]]:
        """The best prefix sequence (output ids) per problem, by beam search with the public code's scoring: the
        sum of token log-probabilities, finished beams compete with open ones, at most `max_output` tokens."""
        beam = beam or self.cfg.beam
        enc = self.encode(input_ids, attention_mask, num_pos, num_count, graphs)
        batch = input_ids.size(0)
        hyps: list[list[_Hyp]] = [[_Hyp(0.0, [(enc["problem"][b], False)], [], None, [])] for b in range(batch)]
        n_ops = self.cfg.num_ops
        for _ in range(self.cfg.max_output):
            live = [(b, h) for b in range(batch) for h in hyps[b] if h.goals]
            if not live:
                break
            ex = torch.tensor([b for b, _ in live], device=input_ids.device)
            goals = torch.stack([h.goals[-1][0] for _, h in live])
            cur = torch.empty_like(goals)
            with_left = [i for i, (_, h) in enumerate(live) if h.left is not None]
            without = [i for i, (_, h) in enumerate(live) if h.left is None]
            if without:
                cur[without] = self.predict.current(goals[without], None)
            if with_left:
                lefts = torch.stack([live[i][1].left for i in with_left])
                cur[with_left] = self.predict.current(goals[with_left], lefts)
            ctx = self.predict.context(cur, enc["keys"][ex], enc["outputs"][ex], enc["seq_mask"][ex])
            logp = torch.log_softmax(self.predict.logits(cur, ctx, enc["leaf_keys"][ex], enc["leaf_mask"][ex]), 1)
            top_v, top_i = logp.topk(min(beam, logp.size(1)), dim=1)
            top_v, top_i = top_v.tolist(), top_i.tolist()
            # Per problem: finished beams and every extension compete; the best `beam` survive.
            candidates: list[list[tuple[float, int, int | None, _Hyp]]] = [
                [(h.score, -1, None, h) for h in hyps[b] if not h.goals] for b in range(batch)]
            for i, (b, h) in enumerate(live):
                for v, tok in zip(top_v[i], top_i[i], strict=True):
                    candidates[b].append((h.score + v, i, tok, h))
            chosen = [sorted(c, key=lambda c: -c[0])[:beam] for c in candidates]
            new_ops = [(b, k) for b in range(batch) for k, c in enumerate(chosen[b]) if c[2] is not None
                       and c[2] < n_ops]
            children = {}
            if new_ops:
                rows = [chosen[b][k][1] for b, k in new_ops]
                ops = torch.tensor([chosen[b][k][2] for b, k in new_ops], device=input_ids.device)
                lg, rg = self.generate(cur[rows], ctx[rows], ops)
                op_emb = self.generate.embeddings(ops)
                for j, key in enumerate(new_ops):
                    children[key] = (lg[j], rg[j], op_emb[j])
            new_hyps: list[list[_Hyp]] = []
            pending: list[_Hyp] = []
            for b in range(batch):
                out = []
                for k, (score, _row, tok, h) in enumerate(chosen[b]):
                    if tok is None:
                        out.append(h)
                        continue
                    nh = _Hyp(score, h.goals[:-1], list(h.stack), None, h.tokens + [tok])
                    if tok < n_ops:
                        lg_, rg_, emb = children[(b, k)]
                        nh.goals += [(rg_, True), (lg_, False)]
                        nh.stack.append((emb, False))
                    else:
                        nh.carry = enc["leaves"][b, tok - n_ops]
                        pending.append(nh)
                    out.append(nh)
                new_hyps.append(out)
            self._merge_pending(pending)
            for row in new_hyps:
                for h in row:
                    h.left = h.stack[-1][0] if h.stack and h.stack[-1][1] else None
            hyps = new_hyps
        return [max(row, key=lambda h: h.score).tokens for row in hyps]

    def _merge_pending(self, pending: list[_Hyp]) -> None:
        """A new leaf closes every finished subtree above it: merge level by level, batched over hypotheses."""
        while pending:
            ready = [h for h in pending if h.stack and h.stack[-1][1]]
            for h in pending:
                if not (h.stack and h.stack[-1][1]):
                    h.stack.append((h.carry, True))
            if not ready:
                break
            lefts = torch.stack([h.stack[-1][0] for h in ready])
            ops = torch.stack([h.stack[-2][0] for h in ready])
            merged = self.merge(ops, lefts, torch.stack([h.carry for h in ready]))
            for j, h in enumerate(ready):
                del h.stack[-2:]
                h.carry = merged[j]
            pending = ready


@dataclass
class _Hyp:
    score: float
    goals: list  # stack of (goal vector, is right child)
    stack: list  # stack of (embedding, is a finished subtree)
    left: Tensor | None  # the finished left sibling subtree of the next node, if any
    tokens: list[int]
    carry: Tensor | None = None
