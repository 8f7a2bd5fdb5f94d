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
#include <cstdlib>
#include <iterator>
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
// Channels are accumulated this many at a time, so that a thread's block sums
// live on its stack whatever the width of the leaf.
constexpr int64_t kChannelChunk = 1024;
// Below this many elements per thread, a thread costs more than it saves.
constexpr int64_t kElementsPerThread = int64_t{1} << 18;
// The most threads DECOUPLED_OPTAX_CPU_KERNEL_THREADS may ask for.
constexpr int64_t kMaxForcedThreads = 256;

// A thread's stack scratch: one row block's float sums for a chunk of
// channels, and (splitting channels) the chunk's double sums.
constexpr int64_t kBlockBytes = kStatistics * kChannelChunk * sizeof(float);
constexpr int64_t kChunkSumBytes = kStatistics * kChannelChunk * sizeof(double);

// Adam's moments (optax.scale_by_adam) and direction; with `Nesterov`, the
// official AdamP's (b1 m + (1 - b1) g) in the numerator. The bias corrections
// come as reciprocals: one division per element is the compute bound.
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

// Rows [row_begin, row_end) of the outer axis, channels [c_begin, c_end) with
// at most kChannelChunk of them; adds the statistics of channel c to
// sums[k * stride + c - c_begin].
template <class Direction>
ACCUMULATE_TARGETS void AccumulateChunk(const Direction& direction, const float* grad,
                                        const float* param, const Layout& layout,
                                        int64_t row_begin, int64_t row_end, int64_t c_begin,
                                        int64_t c_end, double* sums, int64_t stride) {
  const int64_t channels = layout.channels, inner = layout.inner;
  const int64_t width = c_end - c_begin;
  if (inner == 1) {
    // Channel innermost: each row is a contiguous run of channels.
    float block[kStatistics][kChannelChunk];
    float* gw = block[0];
    float* gg = block[1];
    float* ww = block[2];
    float* wu = block[3];
    for (int64_t block_begin = row_begin; block_begin < row_end; block_begin += kRowBlock) {
      for (auto& sum : block) std::fill(sum, sum + width, 0.0f);
      const int64_t block_end = std::min(row_end, block_begin + kRowBlock);
      for (int64_t row = block_begin; row < block_end; ++row) {
        const int64_t base = row * channels + c_begin;
        // The moments, grads, params and block sums never overlap.
#pragma GCC ivdep
        for (int64_t j = 0; j < width; ++j) {
          const float g = grad[base + j], w = param[base + j];
          const float u = direction(base + j, g);
          gw[j] += g * w;
          gg[j] += g * g;
          ww[j] += w * w;
          wu[j] += w * u;
        }
      }
      for (int k = 0; k < kStatistics; ++k) {
        for (int64_t j = 0; j < width; ++j) sums[k * stride + j] += block[k][j];
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
        double* sum = sums + (c - c_begin);
        sum[0] += gw;
        sum[stride] += gg;
        sum[2 * stride] += ww;
        sum[3 * stride] += wu;
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

// DECOUPLED_OPTAX_CPU_KERNEL_THREADS=n (read once) runs every leaf on n
// threads whatever its size, so that tests reach the threaded paths with
// small leaves and few cores; 0 when unset or invalid.
int64_t ForcedThreads() {
  static const int64_t threads = [] {
    const char* value = std::getenv("DECOUPLED_OPTAX_CPU_KERNEL_THREADS");
    if (value == nullptr) return int64_t{0};
    char* end = nullptr;
    const long long n = std::strtoll(value, &end, 10);
    if (end == value || *end != '\0' || n < 1) return int64_t{0};
    return std::min<int64_t>(n, kMaxForcedThreads);
  }();
  return threads;
}

int64_t AutomaticThreads(const Layout& layout, int64_t cores) {
  const int64_t size = layout.outer * layout.channels * layout.inner;
  return std::clamp<int64_t>(size / kElementsPerThread, 1, std::max<int64_t>(cores, 1));
}

int64_t KernelThreads(const Layout& layout) {
  const int64_t forced = ForcedThreads();
  return forced > 0 ? forced : AutomaticThreads(layout, UsableCores());
}

struct Plan {
  int64_t threads;
  bool split_rows;        // else channels
  int64_t scratch_bytes;  // what FirstPass allocates, heap and stack
};

// How FirstPass splits a leaf over at most `threads` threads, and the memory
// it needs beyond the buffers. Splitting rows gives each thread double sums
// for every channel (32 bytes per channel), so it is taken only while those
// total at most half the leaf's 4 bytes per element: threads * 16 <= outer *
// inner. Otherwise threads take disjoint channels and write the statistics
// directly. Either way the scratch is at most half the leaf plus a few chunks
// per thread, whatever the core count.
Plan MakePlan(const Layout& layout, int64_t threads) {
  const int64_t per_channel = layout.outer * layout.inner;
  if (threads > 1 && layout.outer >= threads && threads * 16 <= per_channel) {
    return {threads, true, threads * (kStatistics * layout.channels * int64_t{sizeof(double)} +
                                      kBlockBytes)};
  }
  // A thread without channels would only be started and joined.
  threads = std::clamp<int64_t>(layout.channels, 1, std::max<int64_t>(threads, 1));
  return {threads, false, threads * (kBlockBytes + kChunkSumBytes)};
}

template <class Direction>
void FirstPass(const Direction& direction, const float* grad, const float* param,
               const Layout& layout, float* statistics) {
  const int64_t channels = layout.channels;
  const Plan plan = MakePlan(layout, KernelThreads(layout));
  const int64_t threads = plan.threads;
  // Splitting rows: each thread's sums of all channels, added up in thread
  // order at the end (the same result for the same thread count).
  std::vector<double> partials(plan.split_rows ? threads * kStatistics * channels : 0, 0.0);
  auto work = [&](int64_t t) {
    if (plan.split_rows) {
      double* sums = partials.data() + t * kStatistics * channels;
      const int64_t row_begin = layout.outer * t / threads;
      const int64_t row_end = layout.outer * (t + 1) / threads;
      for (int64_t c_begin = 0; c_begin < channels; c_begin += kChannelChunk) {
        AccumulateChunk(direction, grad, param, layout, row_begin, row_end, c_begin,
                        std::min(channels, c_begin + kChannelChunk), sums + c_begin, channels);
      }
      return;
    }
    double sums[kStatistics * kChannelChunk];
    const int64_t end = channels * (t + 1) / threads;
    for (int64_t c_begin = channels * t / threads; c_begin < end; c_begin += kChannelChunk) {
      const int64_t c_end = std::min(end, c_begin + kChannelChunk);
      std::fill(std::begin(sums), std::end(sums), 0.0);
      AccumulateChunk(direction, grad, param, layout, 0, layout.outer, c_begin, c_end, sums,
                      kChannelChunk);
      for (int k = 0; k < kStatistics; ++k) {
        for (int64_t c = c_begin; c < c_end; ++c) {
          statistics[k * channels + c] = static_cast<float>(sums[k * kChannelChunk + c - c_begin]);
        }
      }
    }
  };
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < threads; ++t) helpers.emplace_back(work, t);
  work(0);
  for (auto& helper : helpers) helper.join();
  if (!plan.split_rows) return;
  for (int64_t i = 0; i < kStatistics * channels; ++i) {
    double total = 0.0;
    for (int64_t t = 0; t < threads; ++t) total += partials[t * kStatistics * channels + i];
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

// scalars, in the order of decoupled_optax.directions.AdamKernelScalars: b1,
// 1 - b1, b2, 1 - b2, eps, 1 / (1 - b1^t), 1 / (1 - b2^t). Python computes the
// same direction from the same float32 values (AdamDirection.from_moments).
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
    run(Adam<true>{s[0], s[1], s[2], s[3], s[4], s[5], s[6], mu_in, nu_in, mu_new,
                   nu_new});
  } else {
    run(Adam<false>{s[0], s[1], s[2], s[3], s[4], s[5], s[6], mu_in, nu_in, mu_new,
                    nu_new});
  }
  return ffi::Error::Success();
}

// scalars, as decoupled_optax.directions.MomentumKernelScalars: the decay.
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

// The kernel's own plan for a leaf, so that tests can check its memory bound
// for any core count without the cores.
PyObject* PlanForPython(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"outer", "channels", "inner", "cores", "threads", nullptr};
  long long outer, channels, inner, cores = 0, threads = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLL|$LL", const_cast<char**>(keywords), &outer,
                                   &channels, &inner, &cores, &threads)) {
    return nullptr;
  }
  if (outer < 1 || channels < 1 || inner < 1 || cores < 0 || threads < 0 ||
      threads > kMaxForcedThreads) {
    PyErr_SetString(PyExc_ValueError, "plan: expected a non-empty layout and 0 <= threads <= 256");
    return nullptr;
  }
  const Layout layout{outer, channels, inner};
  const int64_t n = threads > 0  ? threads
                    : cores > 0 ? AutomaticThreads(layout, cores)
                                : KernelThreads(layout);
  const Plan plan = MakePlan(layout, n);
  return Py_BuildValue("{s:L,s:O,s:L}", "threads", static_cast<long long>(plan.threads),
                       "split_rows", plan.split_rows ? Py_True : Py_False, "scratch_bytes",
                       static_cast<long long>(plan.scratch_bytes));
}

PyMethodDef kMethods[] = {
    {"handlers", Handlers, METH_NOARGS, "The XLA FFI handlers, by direction, as PyCapsules."},
    {"plan", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(PlanForPython)),
     METH_VARARGS | METH_KEYWORDS,
     "plan(outer, channels, inner, *, cores=0, threads=0) -> {threads, split_rows, "
     "scratch_bytes}: how the kernel runs a leaf viewed as (outer, channels, inner). threads > 0: "
     "exactly that many (DECOUPLED_OPTAX_CPU_KERNEL_THREADS); else cores > 0: the kernel's "
     "choice on that many cores; else: what it does in this process."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu_kernels",
                       "AdamP/SGDP's one-pass moments and radial statistics for XLA:CPU.", -1,
                       kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__cpu_kernels() { return PyModule_Create(&kModule); }
