"""Factual recall at toy scale: where a small Gemma-style model keeps facts, rewriting
them with ROME, and reading / erasing them with probes and LEACE.

    python experiments/factual_recall.py [--steps 4000] [--out runs/facts] [--quick]

1. Data: synthetic people ("ada stone") with three relations (home city, job, instrument),
   each stated in three training phrasings ("ada stone lives in oslo .") and one held-out
   phrasing never trained on ("ada stone has a home in"). A word-level vocabulary.
2. Training: a 4-layer Gemma-style model (RMSNorm, RoPE, GeGLU MLPs, no post-norms so
   ROME's rank-one write is exact) on random streams of training statements.
   Recall is reported on trained and on held-out phrasings first: the paraphrase score
   below means little unless held-out phrasings are recalled.
3. Causal tracing (Meng et al. 2022, Figure 1): noise on the subject's embeddings, then
   restore one hidden state / MLP output / attention output per (layer, token).
4. ROME at the layer where restoring the MLP at the last subject token recovers most:
   efficacy, paraphrase (other training phrasings and the held-out one) and
   neighbourhood (other people with the same relation keep their object) scores.
5. Probes for the home city at the last subject token, per layer (held-out people, with
   Hewitt & Liang's control task), and LEACE erasing it there (that layer, that token):
   recall of every relation before and after.

Writes `experiments/results/factual_recall.json` and `experiments/figures/factual_recall_*.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mechjax as mj
from mechjax.causal.tracing import causal_trace
from mechjax.model.losses import mean_loss
from mechjax.representations import leace, probes, rome
from mechjax.views.figures import finish_figure
from mechjax.views.representations import plot_probe_scores, plot_scores

HERE = Path(__file__).resolve().parent
FIRST = "ada ben cara dev eli fay gus hana ivo jun kai lena".split()
LAST = "stone rivers woods marsh hill frost gale lake reed vale".split()
RELATIONS = {  # training phrasings, the held-out phrasing, the objects
    "city": (
        ["lives in", "resides in", "is living in"],
        "has a home in",
        "paris oslo lima cairo delhi quito rome seoul tunis accra".split(),
    ),
    "job": (
        ["works as a", "is employed as a", "earns a living as a"],
        "has a job as a",
        "baker pilot nurse judge miner chef tailor farmer".split(),
    ),
    "instrument": (
        ["plays the", "performs on the", "practises the"],
        "is skilled at the",
        "violin harp flute drum cello oboe lute horn".split(),
    ),
}


class Facts:
    """The vocabulary, the people and their facts, and token sequences."""

    def __init__(self, n_people: int, seed: int = 0):
        words = {"."}
        for phrasings, held_out, objects in RELATIONS.values():
            for phrase in [*phrasings, held_out]:
                words.update(phrase.split())
            words.update(objects)
        self.vocab = ["<bos>", *sorted(words | set(FIRST) | set(LAST))]
        self.id = {w: i for i, w in enumerate(self.vocab)}
        rng = np.random.default_rng(seed)
        pairs = [(f, last) for f in FIRST for last in LAST]
        self.people = [pairs[i] for i in rng.permutation(len(pairs))[:n_people]]
        self.facts = {
            r: rng.integers(0, len(objs), n_people) for r, (_, _, objs) in RELATIONS.items()
        }

    def encode(self, text: str) -> list[int]:
        return [self.id[w] for w in text.split()]

    def object_id(self, relation: str, index: int) -> int:
        return self.id[RELATIONS[relation][2][index]]

    def prompt(self, person: int, relation: str, phrase: str) -> list[int]:
        """BOS, the person, the phrase: the object comes next."""
        return [0, *self.encode(" ".join(self.people[person]) + " " + phrase)]

    def statement(self, person: int, relation: str, phrasing: int) -> list[int]:
        phrase = RELATIONS[relation][0][phrasing]
        obj = RELATIONS[relation][2][self.facts[relation][person]]
        return self.encode(f"{' '.join(self.people[person])} {phrase} {obj} .")

    def batch(self, rng: np.random.Generator, batch: int, n_ctx: int) -> np.ndarray:
        """Streams of random training statements after a BOS, cut at n_ctx."""
        rows = []
        for _ in range(batch):
            row = [0]
            while len(row) < n_ctx:
                relation = list(RELATIONS)[rng.integers(3)]
                row += self.statement(rng.integers(len(self.people)), relation, rng.integers(3))
            rows.append(row[:n_ctx])
        return np.asarray(rows, np.int32)


def model_config(vocab_size: int) -> mj.ModelConfig:
    return mj.ModelConfig(
        d_vocab=vocab_size, d_model=64, n_layers=4, n_heads=4, d_head=16, n_ctx=48,
        d_mlp=256, act_fn="gelu_tanh", gated_mlp=True, normalization="rmsnorm",
        norm_eps=1e-6, norm_weight_offset=1.0, positional="rope", scale_embeddings=True,
        tied_embeddings=True, name="facts-gemma",
    )  # fmt: skip


def train(facts: Facts, cfg, steps: int, seed: int = 0):
    params = mj.init_params(jax.random.key(seed), cfg)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, steps, 3e-4)
    optimizer = optax.adamw(schedule, weight_decay=0.01)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, tokens):
        loss, grads = jax.value_and_grad(mean_loss)(params, tokens, cfg)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    for i in range(steps):
        params, state, loss = step(params, state, jnp.asarray(facts.batch(rng, 32, cfg.n_ctx)))
        if (i + 1) % max(1, steps // 8) == 0:
            print(f"  step {i + 1}/{steps}: loss {float(loss):.3f}", flush=True)
    return params


def recall(params, cfg, facts: Facts, relation: str, phrase: str, people=None) -> np.ndarray:
    """Whether the model's next token after each person's prompt is their object."""
    people = range(len(facts.people)) if people is None else people
    prompts = np.asarray([facts.prompt(p, relation, phrase) for p in people])
    predicted = np.asarray(mj.forward(params, prompts, cfg))[:, -1].argmax(-1)
    return predicted == np.asarray(
        [facts.object_id(relation, facts.facts[relation][p]) for p in people]
    )


def recall_table(params, cfg, facts: Facts) -> dict:
    out = {}
    for relation, (phrasings, held_out, _) in RELATIONS.items():
        trained = np.mean([recall(params, cfg, facts, relation, p).mean() for p in phrasings])
        out[relation] = {
            "trained_phrasings": float(trained),
            "held_out_phrasing": float(recall(params, cfg, facts, relation, held_out).mean()),
        }
    return out


def trace(params, cfg, facts: Facts, n_samples: int) -> dict:
    """Causal tracing over every person and relation (first training phrasing), averaged
    over the facts the model recalls: restored probability maps [layer, pos]."""
    maps = {"hidden": [], "mlp": [], "attn": []}
    probs = []
    for relation, (phrasings, _, _) in RELATIONS.items():
        good = np.flatnonzero(recall(params, cfg, facts, relation, phrasings[0]))
        prompts = np.asarray([facts.prompt(p, relation, phrasings[0]) for p in good])
        result = causal_trace(
            params, cfg, prompts, [1, 2], key=jax.random.key(1), n_samples=n_samples, window=1
        )
        for kind in maps:  # align on the end of the prompt: phrasings differ in length
            maps[kind].append(np.asarray(getattr(result, kind))[:, [1, 2, -1]])
        probs.append((result.clean_prob, result.corrupted_prob))
    return {
        **{kind: np.mean(values, axis=0) for kind, values in maps.items()},
        "clean_prob": float(np.mean([p[0] for p in probs])),
        "corrupted_prob": float(np.mean([p[1] for p in probs])),
    }


def plot_trace(traced: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), layout="constrained")
    for i, kind in enumerate(("hidden", "mlp", "attn")):
        ax = fig.add_subplot(1, 3, i + 1)
        image = ax.imshow(traced[kind].T, cmap="Purples", aspect="auto", vmin=0)
        ax.set_yticks(range(3), ["first name", "last name*", "last token"])
        ax.set_xlabel("layer")
        ax.set_title(f"restoring {kind}")
        fig.colorbar(image, ax=ax, label="p(correct object)")
    finish_figure(fig, path)


def rome_study(params, cfg, facts: Facts, layer: int, n_edits: int, seed: int = 0) -> dict:
    """ROME edits, one at a time from the trained model: efficacy, paraphrase and
    neighbourhood scores (fractions, as Meng et al. define them)."""
    rng = np.random.default_rng(seed)
    C = rome.key_second_moment(
        params, cfg, [facts.batch(rng, 32, cfg.n_ctx) for _ in range(8)], layer
    )
    scores = {"efficacy": [], "paraphrase": [], "held_out_paraphrase": [], "neighbourhood": []}
    relations = list(RELATIONS)
    for e in range(n_edits):
        relation = relations[e % 3]
        phrasings, held_out, objects = RELATIONS[relation]
        person = int(rng.integers(len(facts.people)))
        old_index = facts.facts[relation][person]
        new_index = (old_index + 1 + rng.integers(len(objects) - 1)) % len(objects)
        old, new = facts.object_id(relation, old_index), facts.object_id(relation, new_index)
        # the key: the last subject token after random statements about other people
        prefixes = [
            facts.statement(int(rng.integers(len(facts.people))), "city", 0) for _ in range(8)
        ]
        contexts = np.asarray(
            [[0, *pre, *facts.prompt(person, relation, "")[1:]] for pre in prefixes]
        )
        key = rome.subject_key(params, cfg, contexts, contexts.shape[1] - 1, layer)
        edited = np.asarray([facts.prompt(person, relation, phrasings[0])])
        others = [r for r in relations if r != relation]
        essence = np.asarray([facts.prompt(person, r, RELATIONS[r][0][0]) for r in others[:1]])
        value = rome.target_value(
            params, cfg, edited, 2, layer, new, essence=essence, essence_subject_pos=2
        )
        new_params = rome.rank_one_update(params, cfg, layer, key, value, C).params

        def wins(phrase, people=(person,), target=new, rival=old, r=relation, w=new_params):
            prompts = np.asarray([facts.prompt(p, r, phrase) for p in people])
            return rome.edit_scores(w, cfg, prompts, target, rival)

        scores["efficacy"].append(float(wins(phrasings[0]).mean()))
        scores["paraphrase"].append(float(np.mean([wins(p).mean() for p in phrasings[1:]])))
        scores["held_out_paraphrase"].append(float(wins(held_out).mean()))
        neighbours = [p for p in range(len(facts.people)) if p != person][:10]
        keep = [
            bool(
                wins(phrasings[0], (p,), facts.object_id(relation, facts.facts[relation][p]), new)[
                    0
                ]
            )
            for p in neighbours
        ]
        scores["neighbourhood"].append(float(np.mean(keep)))
    return {k: float(np.mean(v)) for k, v in scores.items()} | {"n_edits": n_edits, "layer": layer}


def probe_and_erase(params, cfg, facts: Facts, out: Path) -> dict:
    """Probe the home city per layer at two tokens: the last subject token (the paper's
    early site) and the last token of the prompt, where the object is predicted. Then
    erase it with LEACE at the earliest layer where the last-token probe reads it well,
    at that token, and measure recall of every relation before and after."""
    n = len(facts.people)
    cities = facts.facts["city"]
    phrase = RELATIONS["city"][0][0]
    prompts = np.asarray([facts.prompt(p, "city", phrase) for p in range(n)])
    last_names = np.asarray([LAST.index(facts.people[p][1]) for p in range(n)])
    out_dict = {"chance": float(np.bincount(cities).max() / n)}
    results = {}
    # control-task types (Hewitt & Liang): the token under the activation (the last name)
    # at the subject; at the last token, always the same word, the person instead
    for where, pos, token_ids in (("last_subject_token", 2, last_names),
                                  ("last_token", prompts.shape[1] - 1, np.arange(n))):  # fmt: skip
        acts = probes.site_activations(params, cfg, prompts, "resid_post", pos=pos)
        control = probes.control_labels(token_ids, cities, seed=0)
        result = probes.probe(acts, cities, n_classes=10, control=control, steps=200)
        results[where] = (acts, result)
        out_dict[where] = {
            "probe_test_accuracy": result.test_score.round(3).tolist(),
            "control_accuracy": result.control_score.round(3).tolist(),
            "selectivity": result.selectivity.round(3).tolist(),
        }
        plot_probe_scores(result, title=f"home city, {where.replace('_', ' ')}",
                          path=out / f"factual_recall_probe_{where}.png")  # fmt: skip
    acts, result = results["last_token"]
    readable = np.flatnonzero(result.test_score >= 0.9)
    layer = int(readable[0]) if len(readable) else int(np.argmax(result.test_score))
    eraser = leace.fit_leace(np.asarray(acts[layer]), cities, 10)
    after = {}
    for relation, (phrasings, _, _) in RELATIONS.items():
        prompts_r = np.asarray([facts.prompt(p, relation, phrasings[0]) for p in range(n)])
        edit = leace.erase_edit(eraser, "resid_post", layer=layer, pos=prompts_r.shape[1] - 1)
        target = np.asarray([facts.object_id(relation, facts.facts[relation][p]) for p in range(n)])

        def hits(edits=(), tokens=prompts_r, target=target):
            return (
                np.asarray(mj.forward(params, tokens, cfg, edits=edits))[:, -1].argmax(-1) == target
            )

        after[relation] = {
            "before": float(hits().mean()),
            "after_erasure": float(hits([edit]).mean()),
        }
    out_dict["erased_layer"] = layer
    out_dict["recall_with_city_erased"] = after
    return out_dict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--people", type=int, default=80)
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (not the study)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.people, args.edits = 300, 24, 3
    t0 = time.time()
    facts = Facts(args.people)
    cfg = model_config(len(facts.vocab))
    print(
        f"training {cfg.name}: {len(facts.people)} people x 3 relations, vocab {len(facts.vocab)}"
    )
    params = train(facts, cfg, args.steps)
    results = {
        "steps": args.steps,
        "people": args.people,
        "recall": recall_table(params, cfg, facts),
    }
    print("recall:", json.dumps(results["recall"]))
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    traced = trace(params, cfg, facts, n_samples=4 if args.quick else 10)
    plot_trace(traced, figures / "factual_recall_tracing.png")
    mlp_at_subject = traced["mlp"][:, 1]
    layer = int(np.argmax(mlp_at_subject))
    results["tracing"] = {
        "clean_prob": traced["clean_prob"],
        "corrupted_prob": traced["corrupted_prob"],
        **{
            f"{k}_restored": np.asarray(traced[k]).round(3).tolist()
            for k in ("hidden", "mlp", "attn")
        },
        "peak_mlp_layer_at_last_subject_token": layer,
    }
    print("tracing:", json.dumps(results["tracing"]))
    results["rome"] = rome_study(params, cfg, facts, layer, args.edits)
    print("rome:", json.dumps(results["rome"]))
    rome_scores = {
        k: results["rome"][k]
        for k in ("efficacy", "paraphrase", "held_out_paraphrase", "neighbourhood")
    }
    plot_scores(rome_scores, title=f"ROME, {args.edits} edits at layer {layer}",
                path=figures / "factual_recall_rome.png")  # fmt: skip
    results["probes_and_leace"] = probe_and_erase(params, cfg, facts, figures)
    print("probes/leace:", json.dumps(results["probes_and_leace"]))
    erased = results["probes_and_leace"]["recall_with_city_erased"]
    plot_scores({f"{r} {k.split('_')[0]}": v for r, d in erased.items() for k, v in d.items()},
                title="recall with the city erased (LEACE)", ylabel="recall",
                path=figures / "factual_recall_leace.png")  # fmt: skip
    results["wall_s"] = round(time.time() - t0, 1)
    if not args.quick:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "factual_recall.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"done in {results['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
