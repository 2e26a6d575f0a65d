"""Graph-mode tf.data preprocessors of the pretraining tasks, in pipeline order.

documents (clean, split long ones) -> [decontamination] -> spoken form -> tokens ->
packing + denoising, or causal LM. Random choices use stateless TF RNG with one seed per
example (derived from the user seed, the shard, the task and the example's position).
tf.data functions are wrapped in `tf.autograph.experimental.do_not_convert` (they use explicit
`tf.cond`), and the heavy pure functions are module-level `tf.function`s traced once per process:
building a 24-48 task mixture is dominated by tracing otherwise.
"""
