"""Greedy decoding throughput of alexatm-jax vs the PyTorch reference's cached forward loop, on CPU.

    python benchmarks/decode.py --batch_sizes 1 16 --input_len 64 --new_tokens 64

One random model (default: d_model 512, 6+6 layers, 8 heads, FFN 2048, vocab 32000) is built in
the reference implementation (`alexa_teacher_models`) and converted to ours. Both decode the
same prompts greedily for exactly `--new_tokens` steps (EOS is banned on both sides so neither
stops early):

* ours: `greedy_or_sample`, one jitted lax.while_loop with the decoder KV cache (compile time is
  reported separately and excluded), with the LM head built once per model as `InferenceEngine`
  does;
* reference: its encoder once, then `forward(decoder_input_ids=last token,
  past_key_values=..., use_cache=True)` step by step under torch.no_grad().

End-to-end tokens/s = batch * new_tokens / wall time of a whole generation (prompt encoding
included); decode-loop tokens/s = batch * (new_tokens - 1) / (time of new_tokens steps - time of
one step), i.e. without the prompt encoding and the cross-attention K/V projection, which cost
the same on both sides and bound the end-to-end ratio. The two are timed in alternating rounds
(best of `--rounds`) so that load from other processes hits both alike, single-threaded by
default (on a loaded machine torch's OpenMP threads spin-wait and slow the reference down
ten-fold; --threads 0 keeps each library's own threading). Prints both ratios ours / reference
and whether the greedy tokens agree.

`--ceiling` also times, in the same rounds, a loop that does nothing but the step's weight
matmuls and attention products (the same shapes and XLA kernels, nothing else): reference ms per
step / that loop's ms per step is the best decode-loop ratio those kernels allow on this machine,
were norms, softmax, vocabulary passes and the loop itself free.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from machine_load import LoadMonitor  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--input_len", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new_tokens", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side (best kept)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        choices=(0, 1),
        help="1: both sides single-threaded (torch.set_num_threads(1) and XLA's "
        "Eigen thread pool off); 0: each library's default threading",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also time our decode step's weight and attention products alone "
        "(same shapes, same XLA kernels): the best decode-loop ratio they "
        "allow if norms, softmax, vocabulary passes and the loop were free",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("input_len", "new_tokens", "d_model", "layers", "heads", "ffn", "vocab", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if any(b < 1 for b in args.batch_sizes):
        parser.error("--batch_sizes must be >= 1")
    if args.d_model % args.heads:
        parser.error(f"--d_model {args.d_model} must be divisible by --heads {args.heads}")
    return args


def build_models(args: argparse.Namespace):
    """(reference torch model, our ModelConfig, our params) with identical random weights."""
    import alexa_teacher_models as atm
    import flax
    import torch

    from alexatm_jax.conversion import hf_names

    torch.manual_seed(0)
    hf_config = atm.AlexaTMSeq2SeqConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn,
        decoder_ffn_dim=args.ffn,
        max_position_embeddings=max(args.input_len, args.new_tokens) + 2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=-1,
        decoder_start_token_id=0,
        dropout=0.0,
    )
    reference = atm.AlexaTMSeq2SeqForConditionalGeneration(hf_config).eval()
    config = hf_names.hf_config_to_model_config(hf_config.to_dict())
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    params = flax.traverse_util.unflatten_dict(
        {m.path: m.to_ours(state[m.hf_key]) for m in hf_names.tensor_mappings(config)}
    )
    return reference, config, params


def reference_generate(
    model, prompts: np.ndarray, new_tokens: int, start_id: int, eos_id: int
) -> np.ndarray:
    """Greedy ids [batch, new_tokens] from the reference's cached step-by-step forward."""
    import torch

    ids = torch.from_numpy(prompts).long()
    mask = torch.ones_like(ids)
    out = []
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
        token = torch.full((ids.shape[0], 1), start_id, dtype=torch.long)
        past = None
        for _ in range(new_tokens):
            step = model(
                attention_mask=mask,
                encoder_outputs=encoded,
                decoder_input_ids=token,
                past_key_values=past,
                use_cache=True,
            )
            logits = step.logits[:, -1]
            logits[:, eos_id] = -float("inf")
            token = logits.argmax(-1, keepdim=True)
            past = step.past_key_values
            out.append(token)
    return torch.cat(out, dim=1).numpy()


def step_weight_kernels(config, params, head) -> tuple[list[tuple], object]:
    """The 2-D weight matrices one greedy decode step multiplies by: per decoder layer (fused self
    q/k/v [embed, 3*embed], self out, cross query, cross out, FFN in, FFN out), and the LM head
    [embed, vocab]."""
    import jax.numpy as jnp

    d = config.d_model
    layers = []
    for layer in range(config.num_decoder_layers):
        p = params["decoder"][f"layers_{layer}"]
        self_attn, cross = p["self_attention"], p["cross_attention"]
        qkv = jnp.concatenate(
            [self_attn[n]["kernel"].reshape(d, d) for n in ("query", "key", "value")], axis=1
        )
        layers.append(
            (
                qkv,
                self_attn["out"]["kernel"].reshape(d, d),
                cross["query"]["kernel"].reshape(d, d),
                cross["out"]["kernel"].reshape(d, d),
                p["mlp"]["wi"]["kernel"],
                p["mlp"]["wo"]["kernel"],
            )
        )
    return layers, head.kernel


def products_alone(
    layers: list[tuple], head_kernel, batch: int, heads: int, cache_len: int, input_len: int
):
    """`run(steps)`: a jitted loop of `steps` steps that do only a greedy decode step's
    products: the weight matmuls and the attention q.k / weights.v over full head-major
    self-attention ([batch, heads, cache_len, head_dim]) and cross-attention caches, in the
    step's order and shapes, each feeding the next (weights and caches cold in cache, as in
    decoding)."""
    import jax
    import jax.numpy as jnp

    d = head_kernel.shape[0]
    head_dim = d // heads
    kv = lambda length, seed: [
        jax.random.normal(jax.random.key(seed + i), (batch, heads, length, head_dim))
        for i in range(2 * len(layers))
    ]
    self_kv, cross_kv = kv(cache_len, 0), kv(input_len, 1000)

    def attend(x, k, v):
        q = x.reshape(batch, heads, head_dim)
        weights = jax.nn.softmax(jnp.einsum("bhd,bhkd->bhk", q, k), axis=-1)
        return jnp.einsum("bhk,bhkd->bhd", weights, v).reshape(batch, d)

    def step(_, x):
        for i, (qkv, out, cross_query, cross_out, ffn_in, ffn_out) in enumerate(layers):
            x = x + attend((x @ qkv)[:, :d], self_kv[2 * i], self_kv[2 * i + 1]) @ out
            x = x + attend(x @ cross_query, cross_kv[2 * i], cross_kv[2 * i + 1]) @ cross_out
            x = x + jnp.maximum(x @ ffn_in, 0.0) @ ffn_out
        return x + (x @ head_kernel)[:, :d]

    loop = jax.jit(lambda x, steps: jax.lax.fori_loop(0, steps, step, x))
    x = jnp.full((batch, d), 1e-3, jnp.float32)
    return lambda steps: np.asarray(loop(x, steps))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    monitor = LoadMonitor()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    sys.path.insert(0, str(REPO_ROOT))
    import jax
    import torch

    from alexatm_jax.decoding import DecodeOptions, greedy_or_sample, model_steps

    if args.threads == 1:
        torch.set_num_threads(1)
    reference, config, params = build_models(args)
    params = jax.device_put(params)
    # Built once per loaded model, as InferenceEngine does (the transposed table when tied).
    head = model_steps.output_head(config, params)
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batch_sizes:
        prompts = rng.integers(2, args.vocab, (batch, args.input_len)).astype(np.int32)
        segments = np.ones_like(prompts)

        def ours(steps: int) -> np.ndarray:
            options = DecodeOptions(max_new_tokens=steps, bad_words=((config.eos_token_id,),))
            return np.asarray(
                greedy_or_sample(
                    params,
                    prompts,
                    segments,
                    jax.random.key(0),
                    config=config,
                    options=options,
                    head=head,
                ).tokens
            )

        def theirs(steps: int) -> np.ndarray:
            return reference_generate(
                reference, prompts, steps, config.decoder_start_token_id, config.eos_token_id
            )

        start = time.perf_counter()
        our_tokens = ours(args.new_tokens)
        compile_s = time.perf_counter() - start
        ours(1)
        ref_tokens = theirs(args.new_tokens)
        timed = [("ours", ours), ("reference", theirs)]
        if args.ceiling:
            products = products_alone(
                *step_weight_kernels(config, params, head),
                batch,
                config.num_decoder_heads,
                args.new_tokens,
                args.input_len,
            )
            products(args.new_tokens)
            timed.append(("products", products))
        best = {}
        for _ in range(args.rounds):
            for name, fn in timed:
                for steps in (args.new_tokens, 1):
                    start = time.perf_counter()
                    fn(steps)
                    elapsed = time.perf_counter() - start
                    best[name, steps] = min(best.get((name, steps), elapsed), elapsed)
        row = {
            "batch": batch,
            "ours_compile_plus_first_run_s": compile_s,
            "rows_identical": int(np.sum(np.all(our_tokens == ref_tokens, axis=1))),
            "tokens_identical_fraction": float(np.mean(our_tokens == ref_tokens)),
        }
        for name in ("ours", "reference"):
            full, one = best[name, args.new_tokens], best[name, 1]
            row[f"{name}_tokens_per_s"] = batch * args.new_tokens / full
            row[f"{name}_decode_tokens_per_s"] = (
                batch * (args.new_tokens - 1) / max(full - one, 1e-9)
            )
            row[f"{name}_prompt_and_first_token_s"] = one
        row["ratio"] = row["ours_tokens_per_s"] / row["reference_tokens_per_s"]
        row["decode_ratio"] = row["ours_decode_tokens_per_s"] / row["reference_decode_tokens_per_s"]
        if args.ceiling:
            for name in ("ours", "reference", "products"):
                row[f"{name}_ms_per_step"] = (
                    (best[name, args.new_tokens] - best[name, 1]) / (args.new_tokens - 1) * 1e3
                )
            row["decode_ratio_ceiling"] = row["reference_ms_per_step"] / row["products_ms_per_step"]
        rows.append(row)
        print(
            f"batch {batch:3d}: end to end ours {row['ours_tokens_per_s']:8.1f} tok/s, reference "
            f"{row['reference_tokens_per_s']:8.1f} tok/s, ratio {row['ratio']:5.2f}x | decode "
            f"loop only ours {row['ours_decode_tokens_per_s']:8.1f} tok/s, reference "
            f"{row['reference_decode_tokens_per_s']:8.1f} tok/s, ratio "
            f"{row['decode_ratio']:5.2f}x | prompt + first token ours "
            f"{row['ours_prompt_and_first_token_s']:.2f}s, reference "
            f"{row['reference_prompt_and_first_token_s']:.2f}s | compile+first run "
            f"{compile_s:.1f}s | identical rows {row['rows_identical']}/{batch}",
            flush=True,
        )
        if args.ceiling:
            print(
                f"  ceiling: reference {row['reference_ms_per_step']:.1f} ms/step, ours "
                f"{row['ours_ms_per_step']:.1f} ms/step, of which the weight and attention "
                f"products alone take {row['products_ms_per_step']:.1f} ms => "
                f"decode-loop ratio <= {row['decode_ratio_ceiling']:.2f}x with these kernels",
                flush=True,
            )
    # Single-threaded (--threads 1) each side uses one core; else torch and XLA use them all.
    load = monitor.finish(cores_used=1 if args.threads == 1 else os.cpu_count())
    print(LoadMonitor.describe(load))
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"args": vars(args), "results": rows, "machine_load": load}, indent=2) + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
