"""Train-step throughput of alexatm-jax, side by side with the PyTorch reference on CPU.

    python benchmarks/train_step.py --gin_file gin/models/small.gin --batch 8 \
        --input_len 256 --target_len 256 --steps 2 --rounds 3

Times our jitted, sharded AdamW train step (compile and warm-up steps excluded) and reports step
time, CPU time per step, tokens/s (input + target tokens of the global batch per second), model
FLOP/s and MFU (against the chip's peak from `alexatm_jax.training.flops`, or --cpu_peak_flops
on CPU). On CPU it also trains the reference implementation (`alexa_teacher_models`, same shapes,
same batch, torch.optim.AdamW, model.train(), same dropout, all cores) and prints the ratio
ours / reference. All trainers are timed in alternating rounds so that load from other
processes hits them alike; each round starts with `--round_warmup` untimed steps of the trainer,
so that what is timed is a steady step, not the first one after the other trainers ran (the
first step of a round paid up to 2.5 s of page faults in a process with glibc's defaults).

The reference runs in worker processes of its own, so that its host memory allocator is not
ours. `import alexatm_jax` makes glibc keep freed memory for reuse (alexatm_jax/host.py), which
spares our step, and PyTorch's too, the page faults of re-mapping freed memory at every step.
`--reference_malloc` picks the reference's allocator: "system" (glibc's defaults, as PyTorch
ships: the headline ratio), "retain" (the same setting as ours) or "both" (the default: each in
its own worker, timed in the same rounds).

"ours" is the project's default train step on one device. `--variant NAME:KEY=VALUE,...` adds
more of our trainers to the same rounds, e.g. to measure what one setting is worth:

    --variant old:fused_head=0,cotangent_barriers=off,dropout_rng_impl=threefry2x32 \
    --variant 2branches:branches=2 --variant nobarrier:cotangent_barriers=off

KEY is a ModelConfig field, `fused_head` (0/1: the LM head fused with the loss), `branches`
(parallel_branches) or `devices` (use the first N of --num_cpu_devices emulated devices,
data-parallel). The machine's load average and core count are recorded before and
after the run (benchmarks/machine_load.py); a busy machine gets a loud warning and
`"machine_load": {"busy": true, ...}` in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from machine_load import LoadMonitor  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--gin_file",
        default=None,
        help="model gin file (e.g. gin/models/small.gin); default: that file",
    )
    source.add_argument(
        "--model_config_json", default=None, help="a ModelConfig JSON file instead of a gin file"
    )
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        help="extra gin binding, e.g. ModelConfig.num_encoder_layers=2",
    )
    parser.add_argument("--batch", type=int, default=8, help="global batch size (examples)")
    parser.add_argument("--input_len", type=int, default=256, help="encoder length (tokens)")
    parser.add_argument("--target_len", type=int, default=256, help="decoder length (tokens)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternating rounds (ours, reference); the median step is reported",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument(
        "--round_warmup",
        type=int,
        default=1,
        help="untimed steps of each trainer at the start of each round, so that the timed "
        "steps are steady-state steps, not the first after the other trainers ran",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype (parameters stay float32)",
    )
    parser.add_argument("--rules", default="fsdp", help="logical axis rule set")
    parser.add_argument("--remat", default=None, help="override ModelConfig.remat_policy")
    parser.add_argument(
        "--attention_impl",
        default=None,
        help="override ModelConfig.attention_impl (einsum, dot_product, cudnn)",
    )
    parser.add_argument(
        "--num_cpu_devices",
        type=int,
        default=1,
        help="emulated CPU devices, data-parallel (default 1; variants can use "
        "fewer with devices=N)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="another of our trainers, timed in the same rounds (see above)",
    )
    parser.add_argument(
        "--no_reference",
        action="store_true",
        help="skip the PyTorch reference (always skipped off CPU)",
    )
    parser.add_argument(
        "--cpu_peak_flops",
        type=float,
        default=None,
        help="peak FLOP/s of this CPU, for an MFU figure on CPU",
    )
    parser.add_argument(
        "--reference_malloc",
        choices=("system", "retain", "both"),
        default="both",
        help="host allocator of the reference's worker process: glibc's defaults (system), "
        "alexatm_jax's (retain) or one worker of each (both, the default)",
    )
    parser.add_argument("--output_json", default=None, help="also write the results here")
    parser.add_argument("--reference_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch", "input_len", "target_len", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.round_warmup < 0:
        parser.error("--warmup and --round_warmup must be >= 0")
    if args.model_config_json and not pathlib.Path(args.model_config_json).is_file():
        parser.error(f"--model_config_json {args.model_config_json} does not exist")
    if args.gin_file is None and args.model_config_json is None:
        args.gin_file = str(REPO_ROOT / "gin" / "models" / "small.gin")
    if args.num_cpu_devices < 1:
        parser.error("--num_cpu_devices must be >= 1")
    try:
        args.variants = [parse_variant(text) for text in args.variant]
    except ValueError as error:
        parser.error(str(error))
    return args


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """'name:key=value,key=value' -> (name, {key: value})."""
    name, _, spec = text.partition(":")
    if not name or name in ("ours", "reference", "reference_retain"):
        raise ValueError(
            f"--variant {text!r}: needs a NAME other than ours/reference/reference_retain"
        )
    settings = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--variant {text!r}: {item!r} is not KEY=VALUE")
        settings[key.strip()] = value.strip()
    return name, settings


def apply_variant(cfg, settings: dict[str, str]) -> tuple[object, dict]:
    """(ModelConfig with the ModelConfig keys applied, {fused_head, branches, devices})."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes, options = {}, {}
    for key, value in settings.items():
        if key == "fused_head":
            options[key] = value.lower() in ("1", "true", "yes")
        elif key in ("devices", "branches"):
            options[key] = int(value)
        elif key in fields:
            current = getattr(cfg, key)
            if isinstance(current, bool):
                changes[key] = value.lower() in ("1", "true", "yes")
            else:
                changes[key] = type(current)(value)
        else:
            raise SystemExit(
                f"--variant: unknown key {key!r} (ModelConfig field, fused_head, "
                "branches or devices)"
            )
    return cfg.replace(**changes), options


def load_model_config(args: argparse.Namespace):
    """The ModelConfig named by --gin_file/--gin_param or --model_config_json, with overrides."""
    from alexatm_jax.model import ModelConfig

    if args.model_config_json:
        cfg = ModelConfig.from_dict(json.loads(pathlib.Path(args.model_config_json).read_text()))
    else:
        from alexatm_jax.gin_registry import model_config_from_gin, parse_gin

        parse_gin([args.gin_file], args.gin_param)
        cfg = model_config_from_gin()
    overrides = {"dtype": args.dtype}
    if args.remat:
        overrides["remat_policy"] = args.remat
    if args.attention_impl:
        overrides["attention_impl"] = args.attention_impl
    return cfg.replace(**overrides)


def synthetic_batch(cfg, batch: int, input_len: int, target_len: int) -> dict[str, np.ndarray]:
    """Random tokens, every position real (segment id 1), all targets weighted."""
    rng = np.random.default_rng(0)
    low = 3
    return {
        "encoder_input_tokens": rng.integers(low, cfg.vocab_size, (batch, input_len), np.int32),
        "decoder_input_tokens": rng.integers(low, cfg.vocab_size, (batch, target_len), np.int32),
        "decoder_target_tokens": rng.integers(low, cfg.vocab_size, (batch, target_len), np.int32),
        "decoder_loss_weights": np.ones((batch, target_len), np.float32),
        "encoder_segment_ids": np.ones((batch, input_len), np.int32),
        "decoder_segment_ids": np.ones((batch, target_len), np.int32),
    }


class OurTrainer:
    """Our jitted train step, data-parallel over the first `devices` devices (default: all)
    with `branches` parallel gradient branches (default: make_train_step's)."""

    def __init__(
        self,
        cfg,
        host_batch: dict[str, np.ndarray],
        rules: str,
        devices: int | None = None,
        fused_head: bool = True,
        branches: int | None = None,
    ) -> None:
        import jax

        from alexatm_jax.partitioning import MeshConfig, Partitioner
        from alexatm_jax.training import (
            OptimizerConfig,
            create_train_state,
            make_optimizer,
            make_train_step,
        )
        from alexatm_jax.training.config import TrainConfig

        self.jax = jax
        partitioner = Partitioner(MeshConfig(), rules, devices=jax.devices()[:devices])
        tx = make_optimizer(OptimizerConfig(), 10_000)
        self.state = create_train_state(cfg, tx, partitioner, jax.random.key(0))
        extra = {} if branches is None else {"parallel_branches": branches}
        self.step_fn = make_train_step(
            TrainConfig(
                model_config=cfg,
                train_steps=10_000,
                batch_size=next(iter(host_batch.values())).shape[0],
                fused_head=fused_head,
                **extra,
            ),
            partitioner,
        )
        self.batch = partitioner.shard_batch(host_batch)
        self.rng = jax.random.key(1)
        self.num_devices = partitioner.mesh.size
        start = time.perf_counter()
        self.step()
        self.compile_s = time.perf_counter() - start

    def step(self) -> float:
        self.state, metrics = self.step_fn(self.state, self.batch, self.rng)
        return float(self.jax.block_until_ready(metrics["loss"]))


class ReferenceTrainer:
    """The PyTorch reference (alexa_teacher_models) with torch.optim.AdamW, same batch."""

    def __init__(self, cfg, host_batch: dict[str, np.ndarray]) -> None:
        import alexa_teacher_models as atm
        import torch

        from alexatm_jax.conversion.hf_names import model_config_to_hf_config

        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(0)
        hf = {
            k: v
            for k, v in model_config_to_hf_config(cfg).items()
            if k not in ("architectures", "model_type")
        }
        self.torch = torch
        self.model = atm.AlexaTMSeq2SeqForConditionalGeneration(
            atm.AlexaTMSeq2SeqConfig(**hf)
        ).train()
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            is_norm = "layer_norm" in name or "layernorm" in name
            (no_decay if name.endswith("bias") or is_norm else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-4,
            betas=(0.9, 0.95),
            eps=1e-8,
        )
        self.inputs = {
            "input_ids": torch.from_numpy(host_batch["encoder_input_tokens"]).long(),
            "attention_mask": torch.from_numpy(host_batch["encoder_segment_ids"]).long(),
            "decoder_input_ids": torch.from_numpy(host_batch["decoder_input_tokens"]).long(),
            "decoder_attention_mask": torch.from_numpy(host_batch["decoder_segment_ids"]).long(),
        }
        self.targets = torch.from_numpy(host_batch["decoder_target_tokens"]).long()
        self.weights = torch.from_numpy(host_batch["decoder_loss_weights"])
        start = time.perf_counter()
        self.step()
        self.compile_s = time.perf_counter() - start

    def step(self) -> float:
        torch = self.torch
        logits = self.model(**self.inputs).logits.float()
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1), reduction="none"
        )
        loss = (token_loss * self.weights.reshape(-1)).sum() / self.weights.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def timed_step(trainer) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step of an in-process trainer."""
    start, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    return time.perf_counter() - start, time.process_time() - cpu


def reference_worker(args: argparse.Namespace) -> int:
    """`--reference_worker`: builds the reference, prints {"compile_s": ...}, then answers each
    line on stdin with one step's {"wall": s, "cpu": s} (this process's CPU time)."""
    cfg = load_model_config(args)
    trainer = ReferenceTrainer(
        cfg, synthetic_batch(cfg, args.batch, args.input_len, args.target_len)
    )
    print(json.dumps({"compile_s": trainer.compile_s}), flush=True)
    for _ in sys.stdin:
        wall, cpu = timed_step(trainer)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)
    return 0


class ReferenceProcess:
    """The reference in a worker process (this script with --reference_worker) whose
    ALEXATM_JAX_HOST_MALLOC is `malloc`; `timed_step()` runs one step there."""

    num_devices = 1

    def __init__(self, argv: list[str], malloc: str) -> None:
        import subprocess

        env = dict(os.environ, ALEXATM_JAX_HOST_MALLOC=malloc, JAX_PLATFORMS="cpu")
        self.process = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), *argv, "--reference_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.compile_s = self._reply()["compile_s"]

    def _reply(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the reference worker exited with status {self.process.wait()}")

    def timed_step(self) -> tuple[float, float]:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        reply = self._reply()
        return reply["wall"], reply["cpu"]

    def step(self) -> None:
        self.timed_step()

    def close(self) -> None:
        """Ends the worker and waits for it, so its CPU time counts as this run's own."""
        self.process.stdin.close()
        self.process.wait()


def time_steps(trainer, steps: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of each of `steps` consecutive steps."""
    if isinstance(trainer, ReferenceProcess):
        return [trainer.timed_step() for _ in range(steps)]
    return [timed_step(trainer) for _ in range(steps)]


REFERENCE_NAMES = {"system": "reference", "retain": "reference_retain"}
REFERENCE_MALLOC = {name: malloc for malloc, name in REFERENCE_NAMES.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_worker:
        return reference_worker(args)
    monitor = LoadMonitor()
    import jax

    import alexatm_jax  # noqa: F401  sets the host allocator before JAX runs anything

    if args.num_cpu_devices > 1:  # before the first JAX computation
        jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    from tqdm import tqdm

    from alexatm_jax.host import host_malloc_mode
    from alexatm_jax.model import count_params, param_shapes
    from alexatm_jax.training.flops import mfu, peak_flops_per_device, train_flops_per_step

    cfg = load_model_config(args)
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    run_reference = on_cpu and not args.no_reference
    host_batch = synthetic_batch(cfg, args.batch, args.input_len, args.target_len)
    num_params = count_params(param_shapes(cfg))
    print(
        f"model: {num_params / 1e6:.1f}M parameters, d_model={cfg.d_model}, layers="
        f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers}, vocab={cfg.vocab_size}, "
        f"dtype={cfg.dtype}, dropout {cfg.dropout_rate} ({cfg.dropout_rng_impl}); batch "
        f"{args.batch} x ({args.input_len} + {args.target_len}) tokens on "
        f"{jax.device_count()} x {device.device_kind}",
        flush=True,
    )

    trainers = {"ours": OurTrainer(cfg, host_batch, args.rules)}
    variant_settings = {"ours": {}}
    for name, settings in args.variants:
        variant_cfg, options = apply_variant(cfg, settings)
        trainers[name] = OurTrainer(variant_cfg, host_batch, args.rules, **options)
        variant_settings[name] = settings
    if run_reference:
        worker_argv = list(argv if argv is not None else sys.argv[1:])
        for malloc in ("system", "retain"):
            if args.reference_malloc in (malloc, "both"):
                trainers[REFERENCE_NAMES[malloc]] = ReferenceProcess(worker_argv, malloc)
    for name, trainer in trainers.items():
        print(f"{name}: first step (compile/warm-up) {trainer.compile_s:.1f}s", flush=True)
        for _ in range(args.warmup):
            trainer.step()

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    with tqdm(total=args.rounds * args.steps * len(trainers), desc="timed steps") as bar:
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                for _ in range(args.round_warmup):
                    trainer.step()
                for seconds in time_steps(trainer, args.steps):
                    times[name].append(seconds)
                    bar.update(1)
    for trainer in trainers.values():
        if isinstance(trainer, ReferenceProcess):
            trainer.close()
    load = monitor.finish(cores_used=os.cpu_count())

    tokens_per_step = args.batch * (args.input_len + args.target_len)
    flops_per_step = train_flops_per_step(cfg, args.batch, args.input_len, args.target_len)
    peak = peak_flops_per_device(device.device_kind, args.dtype, args.cpu_peak_flops)
    results = {
        "config": cfg.to_dict(),
        "batch": args.batch,
        "input_len": args.input_len,
        "target_len": args.target_len,
        "device": device.device_kind,
        "num_devices": jax.device_count(),
        "flops_per_step": flops_per_step,
        "peak_flops_per_device": peak,
        "variants": variant_settings,
        "host_malloc": {name: REFERENCE_MALLOC.get(name, host_malloc_mode()) for name in trainers},
        "machine_load": load,
    }
    for name, pairs in times.items():
        seconds = [wall for wall, _ in pairs]
        median = statistics.median(seconds)
        cpu_median = statistics.median(cpu for _, cpu in pairs)
        entry = {
            "step_time_s": median,
            "cpu_time_per_step_s": cpu_median,
            "tokens_per_s": tokens_per_step / median,
            "model_flops_per_s": flops_per_step / median,
            "all_step_times_s": seconds,
            "all_cpu_times_s": [cpu for _, cpu in pairs],
        }
        if peak:
            num_devices = trainers[name].num_devices
            entry["mfu"] = mfu(flops_per_step, median, num_devices, peak)
        results[name] = entry
        mfu_text = f", MFU {entry['mfu'] * 100:.1f}%" if "mfu" in entry else ""
        devices_text = (
            "" if name in REFERENCE_NAMES.values() else f" [{trainers[name].num_devices} device(s)]"
        )
        print(
            f"{name:>16}: {median:.3f} s/step, {cpu_median:.2f} CPU-s/step, "
            f"{entry['tokens_per_s']:.0f} tokens/s, "
            f"{entry['model_flops_per_s'] / 1e9:.1f} GFLOP/s{mfu_text}{devices_text}"
        )
    for name in trainers:
        if name != "ours":
            ratio = results["ours"]["tokens_per_s"] / results[name]["tokens_per_s"]
            print(f"ours / {name} tokens/s: {ratio:.2f}x")
            if name in REFERENCE_NAMES.values():
                results[f"ratio_ours_over_{name}"] = ratio
            else:
                results[name]["ratio_ours_over_this"] = ratio
    print(
        "host allocator (alexatm_jax/host.py): "
        + ", ".join(f"{name} {malloc}" for name, malloc in results["host_malloc"].items())
        + " (system: glibc's defaults, as PyTorch ships)"
    )
    print(LoadMonitor.describe(load))
    if args.output_json:
        pathlib.Path(args.output_json).write_text(json.dumps(results, indent=2))
        print(f"results written to {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
