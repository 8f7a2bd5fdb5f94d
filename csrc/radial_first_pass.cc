// AdamP/SGDP's first pass on the CPU: the moment update and the four
// per-channel statistics of the radial projection, in one read of the arrays.
//
// XLA:CPU emits every reduction as its own single-output kernel, so the
// statistics g.w, |g|^2, |w|^2 and w.u cost one pass over the arrays each (18
// array passes per AdamP step against optax.adamw's 10). Here one pass reads
// g, w and the moments, writes the moments (in place when XLA aliases them)
// and accumulates the statistics; XLA then fuses the projection, the decay and
// the parameter update into one elementwise pass.
//
// A leaf is viewed as (outer, channels, inner): the channel axis of the
// projection in the middle. Flax kernels (channel last) have inner == 1.

#include <Python.h>

#ifdef __linux__
#include <sched.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// On x86-64 Linux, compiled for AVX-512, AVX2 and baseline x86-64 and picked
// at load time; elsewhere for the compiler's default target.
#if defined(__x86_64__) && defined(__linux__)
#define ACCUMULATE_TARGETS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ACCUMULATE_TARGETS
#endif

constexpr int kStatistics = 4;  // g.w, g.g, w.w, w.u
// Float sums over at most this many rows, then added into double sums: the
// statistics stay accurate to float rounding for any number of rows.
constexpr int64_t kRowBlock = 64;
// Below this many elements per thread, a thread costs more than it saves.
constexpr int64_t kElementsPerThread = int64_t{1} << 18;

// Adam's moments (optax.scale_by_adam) and direction; with `Nesterov`, the
// official AdamP's (b1 m + (1 - b1) g) in the numerator. The bias corrections
// are applied as reciprocals: one division per element is the compute bound.
template <bool Nesterov>
struct Adam {
  float b1, one_minus_b1, b2, one_minus_b2, eps, inverse_bias_correction1,
      inverse_bias_correction2;
  const float* mu_in;
  const float* nu_in;
  float* mu_out;
  float* nu_out;

  inline float operator()(int64_t i, float g) const {
    const float mu = one_minus_b1 * g + b1 * mu_in[i];
    const float nu = one_minus_b2 * (g * g) + b2 * nu_in[i];
    mu_out[i] = mu;
    nu_out[i] = nu;
    const float numerator = Nesterov ? b1 * mu + one_minus_b1 * g : mu;
    return (numerator * inverse_bias_correction1) /
           (std::sqrt(nu * inverse_bias_correction2) + eps);
  }
};

// optax.trace: the momentum buffer of raw gradients, PyTorch's Nesterov.
template <bool Nesterov>
struct Momentum {
  float decay;
  const float* trace_in;
  float* trace_out;

  inline float operator()(int64_t i, float g) const {
    const float trace = g + decay * trace_in[i];
    trace_out[i] = trace;
    return Nesterov ? g + decay * trace : trace;
  }
};

struct Layout {
  int64_t outer, channels, inner;
};

// Rows [row_begin, row_end) of the outer axis, channels [c_begin, c_end);
// adds the statistics of channel c to sums[k * channels + c].
template <class Direction>
ACCUMULATE_TARGETS void Accumulate(const Direction& direction, const float* grad, const float* param,
                const Layout& layout, int64_t row_begin, int64_t row_end, int64_t c_begin,
                int64_t c_end, double* sums) {
  const int64_t channels = layout.channels, inner = layout.inner;
  if (inner == 1) {
    // Channel innermost: each row is a contiguous run of channels.
    std::vector<float> block(kStatistics * channels);
    for (int64_t block_begin = row_begin; block_begin < row_end; block_begin += kRowBlock) {
      std::fill(block.begin(), block.end(), 0.0f);
      float* gw = block.data();
      float* gg = gw + channels;
      float* ww = gg + channels;
      float* wu = ww + channels;
      const int64_t block_end = std::min(row_end, block_begin + kRowBlock);
      for (int64_t row = block_begin; row < block_end; ++row) {
        const int64_t base = row * channels;
        // The moments, grads, params and block sums never overlap.
#pragma GCC ivdep
        for (int64_t c = c_begin; c < c_end; ++c) {
          const float g = grad[base + c], w = param[base + c];
          const float u = direction(base + c, g);
          gw[c] += g * w;
          gg[c] += g * g;
          ww[c] += w * w;
          wu[c] += w * u;
        }
      }
      for (int k = 0; k < kStatistics; ++k) {
        for (int64_t c = c_begin; c < c_end; ++c) sums[k * channels + c] += block[k * channels + c];
      }
    }
    return;
  }
  // Channel followed by a contiguous run of `inner` elements.
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t base = (row * channels + c) * inner;
      for (int64_t block_begin = 0; block_begin < inner; block_begin += kRowBlock) {
        const int64_t block_end = std::min(inner, block_begin + kRowBlock);
        float gw = 0.0f, gg = 0.0f, ww = 0.0f, wu = 0.0f;
#pragma GCC ivdep
        for (int64_t j = base + block_begin; j < base + block_end; ++j) {
          const float g = grad[j], w = param[j];
          const float u = direction(j, g);
          gw += g * w;
          gg += g * g;
          ww += w * w;
          wu += w * u;
        }
        sums[c] += gw;
        sums[channels + c] += gg;
        sums[2 * channels + c] += ww;
        sums[3 * channels + c] += wu;
      }
    }
  }
}

// The cores this process may run on (taskset, cgroup cpusets), not the host's.
int64_t UsableCores() {
  static const int64_t cores = [] {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return static_cast<int64_t>(CPU_COUNT(&set));
#endif
    return std::max<int64_t>(1, std::thread::hardware_concurrency());
  }();
  return cores;
}

// Splits the leaf over threads (rows if there are enough, else channels).
template <class Direction>
void FirstPass(const Direction& direction, const float* grad, const float* param,
               const Layout& layout, float* statistics) {
  const int64_t channels = layout.channels;
  const int64_t size = layout.outer * channels * layout.inner;
  const int64_t threads = std::clamp<int64_t>(size / kElementsPerThread, 1, UsableCores());
  const bool split_rows = layout.outer >= threads;
  std::vector<std::vector<double>> sums(split_rows ? threads : 1,
                                        std::vector<double>(kStatistics * channels, 0.0));
  auto work = [&](int64_t t) {
    if (split_rows) {
      Accumulate(direction, grad, param, layout, layout.outer * t / threads,
                 layout.outer * (t + 1) / threads, 0, channels, sums[t].data());
    } else {  // disjoint channels: one shared set of sums
      Accumulate(direction, grad, param, layout, 0, layout.outer, channels * t / threads,
                 channels * (t + 1) / threads, sums[0].data());
    }
  };
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& helper : helpers) helper.join();
  for (int64_t i = 0; i < kStatistics * channels; ++i) {
    double total = 0.0;
    for (const auto& part : sums) total += part[i];
    statistics[i] = static_cast<float>(total);
  }
}

ffi::Error CheckSizes(const Layout& layout, size_t grad, size_t param, size_t statistics) {
  const int64_t size = layout.outer * layout.channels * layout.inner;
  if (static_cast<int64_t>(grad) != size || static_cast<int64_t>(param) != size ||
      static_cast<int64_t>(statistics) != kStatistics * layout.channels) {
    return ffi::Error::InvalidArgument("radial first pass: the layout does not match the buffers");
  }
  return ffi::Error::Success();
}

// scalars: b1, 1 - b1, b2, 1 - b2, eps, 1 - b1^t, 1 - b2^t (1 - b rounded as
// optax rounds it).
ffi::Error AdamFirstPassImpl(ffi::Buffer<ffi::F32> grad, ffi::Buffer<ffi::F32> param,
                             ffi::Buffer<ffi::F32> mu, ffi::Buffer<ffi::F32> nu,
                             ffi::Buffer<ffi::F32> scalars, ffi::ResultBuffer<ffi::F32> mu_out,
                             ffi::ResultBuffer<ffi::F32> nu_out,
                             ffi::ResultBuffer<ffi::F32> statistics, int64_t outer,
                             int64_t channels, int64_t inner, bool nesterov) {
  const Layout layout{outer, channels, inner};
  if (auto error = CheckSizes(layout, grad.element_count(), param.element_count(),
                              statistics->element_count());
      error.failure()) {
    return error;
  }
  if (scalars.element_count() != 7) {
    return ffi::Error::InvalidArgument("adam first pass: expected 7 scalars");
  }
  const float* s = scalars.typed_data();
  auto run = [&](auto direction) {
    FirstPass(direction, grad.typed_data(), param.typed_data(), layout, statistics->typed_data());
  };
  const float* mu_in = mu.typed_data();
  const float* nu_in = nu.typed_data();
  float* mu_new = mu_out->typed_data();
  float* nu_new = nu_out->typed_data();
  if (nesterov) {
    run(Adam<true>{s[0], s[1], s[2], s[3], s[4], 1.0f / s[5], 1.0f / s[6], mu_in, nu_in, mu_new,
                   nu_new});
  } else {
    run(Adam<false>{s[0], s[1], s[2], s[3], s[4], 1.0f / s[5], 1.0f / s[6], mu_in, nu_in, mu_new,
                    nu_new});
  }
  return ffi::Error::Success();
}

// scalars: the momentum decay.
ffi::Error MomentumFirstPassImpl(ffi::Buffer<ffi::F32> grad, ffi::Buffer<ffi::F32> param,
                                 ffi::Buffer<ffi::F32> trace, ffi::Buffer<ffi::F32> scalars,
                                 ffi::ResultBuffer<ffi::F32> trace_out,
                                 ffi::ResultBuffer<ffi::F32> statistics, int64_t outer,
                                 int64_t channels, int64_t inner, bool nesterov) {
  const Layout layout{outer, channels, inner};
  if (auto error = CheckSizes(layout, grad.element_count(), param.element_count(),
                              statistics->element_count());
      error.failure()) {
    return error;
  }
  if (scalars.element_count() != 1) {
    return ffi::Error::InvalidArgument("momentum first pass: expected 1 scalar");
  }
  const float decay = scalars.typed_data()[0];
  if (nesterov) {
    FirstPass(Momentum<true>{decay, trace.typed_data(), trace_out->typed_data()},
              grad.typed_data(), param.typed_data(), layout, statistics->typed_data());
  } else {
    FirstPass(Momentum<false>{decay, trace.typed_data(), trace_out->typed_data()},
              grad.typed_data(), param.typed_data(), layout, statistics->typed_data());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamFirstPass, AdamFirstPassImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("outer")
                                  .Attr<int64_t>("channels")
                                  .Attr<int64_t>("inner")
                                  .Attr<bool>("nesterov"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MomentumFirstPass, MomentumFirstPassImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("outer")
                                  .Attr<int64_t>("channels")
                                  .Attr<int64_t>("inner")
                                  .Attr<bool>("nesterov"));

// The Python module only hands the handlers to jax.ffi.register_ffi_target.
namespace {

PyObject* Handlers(PyObject*, PyObject*) {
  PyObject* handlers = PyDict_New();
  if (handlers == nullptr) return nullptr;
  const std::pair<const char*, void*> entries[] = {
      {"adam", reinterpret_cast<void*>(AdamFirstPass)},
      {"momentum", reinterpret_cast<void*>(MomentumFirstPass)},
  };
  for (const auto& [name, handler] : entries) {
    PyObject* capsule = PyCapsule_New(handler, nullptr, nullptr);
    if (capsule == nullptr || PyDict_SetItemString(handlers, name, capsule) != 0) {
      Py_XDECREF(capsule);
      Py_DECREF(handlers);
      return nullptr;
    }
    Py_DECREF(capsule);
  }
  return handlers;
}

PyMethodDef kMethods[] = {
    {"handlers", Handlers, METH_NOARGS, "The XLA FFI handlers, by direction, as PyCapsules."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu_kernels",
                       "AdamP/SGDP's one-pass moments and radial statistics for XLA:CPU.", -1,
                       kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__cpu_kernels() { return PyModule_Create(&kModule); }
