"""Each leaf's role and layout, read from the model: Equinox, Flax linen and NNX, bare trees.

The projection and the decay mask must do what the official AdamP and the
common recipes do on the same model in PyTorch, without a layout argument:
an Equinox model is trained by ours and by ``adamp.AdamP`` (each on its own
weights, with JAX's gradients), and a linen GPT's every projection decision
is compared with the official ``_projection`` test on the same weights in
torch layout. The official results come through the ``peer`` fixture
(recorded, or live with ``--extended``).
"""

from __future__ import annotations

import math

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

import decoupled_optax as dopt
from decoupled_optax._layout import leaf_roles

KEY = jax.random.key(0)


class _CNN(eqx.Module):
  """Conv -> InstanceNorm (GroupNorm, one group per channel) -> ReLU, twice, then a linear head."""

  conv1: eqx.nn.Conv2d
  norm1: eqx.nn.GroupNorm
  conv2: eqx.nn.Conv2d
  norm2: eqx.nn.GroupNorm
  head: eqx.nn.Linear

  def __init__(self, key: jax.Array) -> None:
    k1, k2, k3 = jax.random.split(key, 3)
    self.conv1 = eqx.nn.Conv2d(1, 8, 3, padding=1, key=k1)
    self.norm1 = eqx.nn.GroupNorm(8, 8)
    self.conv2 = eqx.nn.Conv2d(8, 16, 3, padding=1, key=k2)
    self.norm2 = eqx.nn.GroupNorm(16, 16)
    self.head = eqx.nn.Linear(16, 10, key=k3)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.norm1(self.conv1(x)))
    x = jax.nn.relu(self.norm2(self.conv2(x)))
    return self.head(jnp.mean(x, axis=(1, 2)))


def _digits_batches(steps: int, batch: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(steps):
    index = rng.choice(len(images), batch, replace=False)
    batches.append((images[index], digits.target[index]))
  return batches


def _eqx_loss(params: _CNN, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = jax.vmap(params)(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _eqx_torch_layout(path: tuple, leaf: np.ndarray) -> np.ndarray:
  """Equinox is PyTorch's layout, but for its conv biases, (out, 1, 1) against torch's (out,)."""
  return leaf.reshape(-1) if jax.tree_util.keystr(path).endswith("bias") else leaf


EQX_STEPS, EQX_LR, EQX_WD = 12, 1e-2, 5e-2


def _official_equinox_run(live) -> dict[str, list[list[np.ndarray]]]:
  """adamp.AdamP on the Equinox CNN: the gradients it was given and its weights after each step.

  The official optimizer steps its own weights, with JAX's gradients at those weights; both lists
  hold the flat leaves in Equinox's layout.
  """
  params = eqx.filter(_CNN(KEY), eqx.is_inexact_array)
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  shapes = [np.shape(x) for _, x in paths_leaves]
  torch_params = [
    live.torch.nn.Parameter(live.torch.tensor(_eqx_torch_layout(p, np.asarray(x))))
    for p, x in paths_leaves
  ]
  official = live.AdamP(torch_params, lr=EQX_LR, weight_decay=EQX_WD, delta=0.1, wd_ratio=0.1)
  grad_fn = jax.jit(jax.grad(_eqx_loss))

  def leaves() -> list[np.ndarray]:
    return [
      p.detach().numpy().reshape(shape).copy()
      for p, shape in zip(torch_params, shapes, strict=True)
    ]

  run: dict[str, list[list[np.ndarray]]] = {"grads": [], "params": []}
  for x, y in _digits_batches(EQX_STEPS):
    grads = jax.tree.leaves(grad_fn(jax.tree_util.tree_unflatten(treedef, leaves()), x, y))
    for parameter, (path, _), g in zip(torch_params, paths_leaves, grads, strict=True):
      parameter.grad = live.torch.tensor(_eqx_torch_layout(path, np.asarray(g)))
    official.step()
    run["grads"].append([np.asarray(g) for g in grads])
    run["params"].append(leaves())
  return run


def _equinox_against_official(official: dict, **options) -> float:
  """Largest relative difference per leaf and step between our adamp and adamp.AdamP.

  Ours is given the official run's gradients: the same inputs, so that the two runs differ only
  by what the optimizers do, not by the float noise of the conv biases' gradients (which the
  instance norms cancel) that Adam would scale up to full steps.
  """
  params = eqx.filter(_CNN(KEY), eqx.is_inexact_array)
  treedef = jax.tree.structure(params)
  tx = dopt.adamp(EQX_LR, EQX_WD, weight_decay_convention="torch", **options)
  state = tx.init(params)
  update = jax.jit(tx.update)
  worst = 0.0
  for grads, reference in zip(official["grads"], official["params"], strict=True):
    grads = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(g) for g in grads])
    updates, state = update(grads, state, params)
    params = eqx.apply_updates(params, updates)
    for ours, theirs in zip(jax.tree.leaves(params), reference, strict=True):
      ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
      worst = max(worst, float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)))
  return worst


@pytest.mark.parametrize("cpu_kernel", [None, False])
def test_equinox_adamp_equals_official_without_channel_axis(cpu_kernel, peer):
  official = peer(_official_equinox_run)
  assert _equinox_against_official(official, cpu_kernel=cpu_kernel) < 1e-5


def test_equinox_with_flax_axis_is_not_the_official_adamp(peer):
  """The comparison can fail: forcing Flax's axis on Equinox's layout departs from the official."""
  official = peer(_official_equinox_run)
  assert _equinox_against_official(official, channel_axis=-1, cpu_kernel=False) > 1e-4


def test_equinox_projects_conv_weights_per_output_channel():
  params = eqx.filter(_CNN(KEY), eqx.is_inexact_array)
  x, y = _digits_batches(1)[0]
  grads = jax.grad(_eqx_loss)(params, x, y)
  projectors, multipliers = dopt.scale_invariance(grads, params)
  # Instance-normalised convs: every output channel (axis 0) is scale invariant.
  for conv in (projectors.conv1, projectors.conv2):
    assert int(conv.weight.view) == 1 and conv.weight.channel_weight.shape[0] > 1
    assert conv.bias is None  # (out, 1, 1): a bias, never projected
  assert projectors.norm1.weight is None and projectors.head.bias is None
  assert float(multipliers.conv1.bias) == 1.0


def test_equinox_roles_and_mask():
  class Model(eqx.Module):
    conv: eqx.nn.Conv2d
    transposed: eqx.nn.ConvTranspose2d
    linear: eqx.nn.Linear
    embedding: eqx.nn.Embedding
    layer_norm: eqx.nn.LayerNorm
    batch_norm: eqx.nn.BatchNorm
    rms_norm: eqx.nn.RMSNorm

    def __init__(self):
      self.conv = eqx.nn.Conv2d(3, 8, 3, key=KEY)
      self.transposed = eqx.nn.ConvTranspose2d(8, 4, 3, key=KEY)
      self.linear = eqx.nn.Linear(8, 4, key=KEY)
      self.embedding = eqx.nn.Embedding(10, 4, key=KEY)
      self.layer_norm = eqx.nn.LayerNorm((4, 5, 6))  # a 3-D weight: still a norm's
      self.batch_norm = eqx.nn.BatchNorm(8, "batch", mode="batch")
      self.rms_norm = eqx.nn.RMSNorm(4)

  model = eqx.filter(Model(), eqx.is_inexact_array)
  mask = dopt.weight_decay_mask(model)
  assert mask.conv.weight and mask.transposed.weight and mask.linear.weight
  assert mask.embedding.weight
  assert not (mask.conv.bias or mask.transposed.bias or mask.linear.bias)
  assert not (mask.layer_norm.weight or mask.layer_norm.bias)
  assert not (mask.batch_norm.weight or mask.batch_norm.bias or mask.rms_norm.weight)
  # A callable mask through the alias decays exactly those leaves.
  tx = dopt.adamw(0.0, 0.5, weight_decay_convention="paper", mask=dopt.weight_decay_mask)
  grads = jax.tree.map(jnp.zeros_like, model)
  updates, _ = tx.update(grads, tx.init(model), model)
  assert jnp.allclose(updates.conv.weight, -0.5 * model.conv.weight)
  assert not jnp.any(updates.conv.bias) and not jnp.any(updates.layer_norm.weight)
  flat = jax.tree_util.tree_flatten_with_path(model, is_leaf=lambda x: x is None)[0]
  roles = {jax.tree_util.keystr(p): r for (p, _), r in zip(flat, leaf_roles(model), strict=True)}
  assert roles[".conv.weight"].channel_axes == (0,)
  assert roles[".embedding.weight"] == ("embedding", "weight", (0,))
  assert roles[".conv.bias"].kind == "bias" and roles[".layer_norm.weight"].kind == "norm"


class _Block(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
    x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x), mask=mask)
    hidden = nn.gelu(nn.Dense(4 * x.shape[-1])(nn.LayerNorm()(x)))
    return x + nn.Dense(x.shape[-1])(hidden)


class _GPT(nn.Module):
  vocab: int = 32
  width: int = 16
  heads: int = 2
  length: int = 8

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab, self.width)(tokens)
    x = x + nn.Embed(self.length, self.width, name="position")(jnp.arange(tokens.shape[1]))
    for _ in range(2):
      x = _Block(self.heads)(x)
    return nn.Dense(self.vocab)(nn.LayerNorm()(x))


def _gpt_torch_layout(path: tuple, leaf: np.ndarray) -> np.ndarray:
  """The same weight as torch's nn.MultiheadAttention/Linear/Embedding would hold it."""
  names = [getattr(k, "key", None) for k in path]
  if names[-1] == "bias":
    return leaf.reshape(-1)  # MHA's (heads, head_dim) biases are one (heads * head_dim,) vector
  if names[-1] != "kernel":
    return leaf  # embeddings (one row per token) and LayerNorm scales
  if names[-2] in ("query", "key", "value"):  # (in, heads, head_dim) -> (heads * head_dim, in)
    return leaf.reshape(leaf.shape[0], -1).T
  if names[-2] == "out":  # (heads, head_dim, out) -> (out, heads * head_dim)
    return leaf.reshape(-1, leaf.shape[-1]).T
  return leaf.T  # Dense (in, out) -> Linear (out, in)


def _official_view(
  live, p: np.ndarray, g: np.ndarray, delta: float = 0.1, eps: float = 1e-8
) -> int:
  """The official AdamP.step's decision: 0 not projected, 1 the channel view, 2 the whole tensor."""
  official = live.AdamP([live.torch.zeros(1, requires_grad=True)])
  p, g = (live.torch.tensor(np.ascontiguousarray(x)) for x in (p, g))
  if p.ndim <= 1:
    return 0
  for view, view_func in ((1, official._channel_view), (2, official._layer_view)):
    cosine = official._cosine_similarity(g, p, eps, view_func)
    if cosine.max() < delta / math.sqrt(view_func(p).size(1)):
      return view
  return 0


GPT_STEPS = 12


def _gpt_run(steps: int) -> list[tuple]:
  """(params, grads) along a GPT's run under optax.adam: the inputs both tests decide on."""
  model = _GPT()
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 32, (4, 8)) for _ in range(steps)]
  params = model.init(KEY, batches[0])["params"]
  tx = optax.adam(3e-3)

  def loss(params, tokens):
    logits = model.apply({"params": params}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  grad_fn, update = jax.jit(jax.grad(loss)), jax.jit(tx.update)
  state = tx.init(params)
  run = []
  for tokens in batches:
    grads = grad_fn(params, tokens)
    run.append((params, grads))
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return run


def _official_gpt_views(live, steps: int = GPT_STEPS) -> np.ndarray:
  """The official decision for every leaf (torch layout) at every step of ``_gpt_run``."""
  views = []
  for params, grads in _gpt_run(steps):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    views.append(
      [
        _official_view(
          live,
          _gpt_torch_layout(path, np.asarray(w)),
          _gpt_torch_layout(path, np.asarray(g)),
        )
        for (path, w), g in zip(flat, jax.tree.leaves(grads), strict=True)
      ]
    )
  return np.asarray(views)


def _gpt_disagreements(official: np.ndarray, **options) -> int:
  """How many of our decisions along ``_gpt_run`` differ from the official ones."""
  decide = jax.jit(lambda g, p: dopt.scale_invariance(g, p, dopt.RadialProjection(**options))[0])
  disagreements = 0
  for (params, grads), theirs in zip(_gpt_run(len(official)), official, strict=True):
    projectors = jax.tree.leaves(
      decide(grads, params), is_leaf=lambda x: x is None or isinstance(x, dopt.RadialProjector)
    )
    ours = [0 if projector is None else int(projector.view) for projector in projectors]
    disagreements += int(np.sum(np.asarray(ours) != theirs))
  return disagreements


def test_gpt_every_decision_matches_the_official_adamp(peer):
  official = peer(_official_gpt_views)
  assert official.shape == (GPT_STEPS, 38) and np.any(official != 0)
  assert _gpt_disagreements(official) == 0


def test_gpt_projecting_every_multi_dim_leaf_departs_from_the_official(peer):
  """The comparison can fail: projection_mask=True also tests (heads, head_dim) biases."""
  assert _gpt_disagreements(peer(_official_gpt_views), projection_mask=True) > 0


def test_flax_attention_kernels_have_their_bias_dims_as_output_axes():
  params = _GPT().init(KEY, jnp.zeros((1, 8), jnp.int32))["params"]
  roles = {
    jax.tree_util.keystr(p): r
    for (p, _), r in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], leaf_roles(params), strict=True
    )
  }
  attention = "['_Block_0']['MultiHeadDotProductAttention_0']"
  assert roles[attention + "['query']['kernel']"].channel_axes == (1, 2)
  assert roles[attention + "['out']['kernel']"].channel_axes == (2,)
  assert roles[attention + "['key']['bias']"].kind == "bias"
  assert roles["['Embed_0']['embedding']"].channel_axes == (0,)
  mask = dopt.weight_decay_mask(params)
  assert mask["_Block_0"]["MultiHeadDotProductAttention_0"]["key"]["kernel"]
  assert not mask["_Block_0"]["MultiHeadDotProductAttention_0"]["key"]["bias"]


def test_nnx_state_roles_match_linen():
  class Model(nnx.Module):
    def __init__(self):
      self.attention = nnx.MultiHeadAttention(2, 8, 8, rngs=nnx.Rngs(0), decode=False)
      self.norm = nnx.LayerNorm(8, rngs=nnx.Rngs(0))

  state = nnx.state(Model(), nnx.Param)
  roles = leaf_roles(state)
  kinds = [r.kind for r in roles]
  assert kinds.count("weight") == 4 and kinds.count("bias") == 5 and kinds.count("norm") == 1
  assert {r.channel_axes for r in roles if r.kind == "weight"} == {(1, 2), (2,)}


def test_bare_trees_keep_the_last_axis_and_explicit_axes_override():
  params = {"w": jnp.arange(12.0).reshape(3, 4) + 1.0}
  grads = {"w": jnp.ones((3, 4))}
  assert leaf_roles(params)[0].kind == "unknown"
  default, _ = dopt.scale_invariance(grads, params)
  assert default["w"].channel_weight.shape == (1, 4)  # one row per column: the last axis
  for axis in (0, {"w": 0}, lambda p: {"w": (0,)}):
    projector = dopt.scale_invariance(grads, params, dopt.RadialProjection(channel_axis=axis))[0][
      "w"
    ]
    assert projector.channel_weight.shape == (3, 1)


def test_bad_channel_axes_name_the_leaf():
  params = {"w": jnp.ones((3, 4))}
  with pytest.raises(ValueError, match="got 2, but the leaf 'w' has shape"):
    dopt.scale_invariance(params, params, dopt.RadialProjection(channel_axis=2))
  with pytest.raises(ValueError, match="channel_axis must be one value"):
    dopt.scale_invariance(params, params, dopt.RadialProjection(channel_axis={"v": 0}))
  with pytest.raises(TypeError, match="channel_axis must be None"):
    dopt.adamp(1e-3, 0.0, channel_axis=1.5)
  with pytest.raises(TypeError, match="projection_mask must be None"):
    dopt.adamp(1e-3, 0.0, projection_mask="bias")


def test_projection_mask_selects_leaves_and_diagnostics_report_them_unprojected():
  params = {"a": jnp.eye(3), "b": jnp.eye(3)}
  grads = {"a": jnp.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}
  grads["b"] = grads["a"]
  tx = dopt.with_diagnostics(dopt.adamp(1e-3, 0.0, projection_mask={"a": True, "b": False}))
  _, state = tx.update(grads, tx.init(params), params)
  report = dopt.read_diagnostics(state)
  assert int(report["projection/a"]) == 1 and int(report["projection/b"]) == 0


def test_equinox_checkpoint_resumes_exactly(tmp_path):
  """docs/equinox.md's checkpointing: tree_serialise_leaves of (model, opt_state), then resume."""
  tx = dopt.adamp(1e-2, 1e-2, weight_decay_convention="torch", mask=dopt.weight_decay_mask)
  model = _CNN(KEY)
  batches = _digits_batches(4)

  @eqx.filter_jit
  def step(model, opt_state, x, y):
    grads = eqx.filter_grad(_eqx_loss)(model, x, y)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state

  opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))
  for x, y in batches[:2]:
    model, opt_state = step(model, opt_state, x, y)
  path = tmp_path / "checkpoint.eqx"
  eqx.tree_serialise_leaves(path, (model, opt_state))
  template = (_CNN(jax.random.key(1)), tx.init(eqx.filter(_CNN(KEY), eqx.is_inexact_array)))
  restored, restored_state = eqx.tree_deserialise_leaves(path, template)
  for x, y in batches[2:]:
    model, opt_state = step(model, opt_state, x, y)
    restored, restored_state = step(restored, restored_state, x, y)
  resumed = jax.tree.leaves((restored, restored_state))
  for a, b in zip(jax.tree.leaves((model, opt_state)), resumed, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gpt_fraction_projected_counts_weights_as_the_official_does(peer):
  """summary/fraction_projected: projected weights over the leaves the official code tests."""
  ((params, grads),) = _gpt_run(1)
  (official,) = peer(lambda live: _official_gpt_views(live, 1))
  tx = dopt.with_diagnostics(dopt.adamp(3e-3, 1e-2, weight_decay_convention="torch"))
  _, state = tx.update(grads, tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  tested = sum(_gpt_torch_layout(path, np.asarray(w)).ndim > 1 for path, w in flat)
  fraction = float(dopt.read_diagnostics(state)["summary/fraction_projected"])
  assert fraction == pytest.approx(sum(v > 0 for v in official) / tested)
