// fp-quant MXFP4 emulation (pipeline/act_quant.cpp) against FP-Quant's Triton kernel as measured on
// an H200 (issue 10, third device run, 2026-12-03: tests/data/consumers/consumers_log_run3.txt,
// "triton floor(log2 x) near powers of two"; consumers_run3.json kernels.log2). The kernel's scale
// is `tl.exp2(tl.floor(tl.log2(amax)) - 2) / (3 / 4)` (triton/mxfp4.py 62). tl.log2 returns a
// float32, so for a group max a few floats below 2^k the rounded log2 is k itself and the floor is
// k, not the exact k - 1: the probe found 724 such inputs among its 2673 values 2^k·(1 - j·2^-24)
// and 2^k·(1 + j·2^-23) (k = -40..40, j = 0..16), all equal to floor(RN32(log2 x)), and 1 among
// 2^20 log-uniform random values (0x1.fffffep-24: exact floor -24, kernel -23). fp4q took the
// exact floor (frexp) before; these tests fail under that rule.
//
// The reference exponent here is computed independently of fp4q's code: log2 in long double,
// rounded once to float32, floored.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/format/format.h"
#include "fp4q/pipeline/act_quant.h"

namespace {

using fp4q::ComputeDtype;
using fp4q::format::FormatId;
using fp4q::pipeline::ActRuntime;
using fp4q::pipeline::InputTransform;

float fl(double v) { return static_cast<float>(v); }

int exact_floor_log2(float x) {
  int e = 0;
  std::frexp(x, &e);
  return e - 1;
}

int kernel_floor_log2(float x) {  // floor(RN32(log2 x)), log2 in long double
  return static_cast<int>(std::floor(static_cast<float>(std::log2(static_cast<long double>(x)))));
}

// The probe's inputs (tools/verify_consumers.py probe_log2), in its order.
std::vector<float> probe_inputs() {
  std::vector<float> xs;
  for (int k = -40; k <= 40; ++k)
    for (int j = 0; j <= 16; ++j) {
      xs.push_back(fl(std::ldexp(1.0 - j * std::ldexp(1.0, -24), k)));
      if (j) xs.push_back(fl(std::ldexp(1.0 + j * std::ldexp(1.0, -23), k)));
    }
  return xs;
}

TEST(FpQuantTritonLog2, ProbeInputsFollowTheGpu) {
  const auto xs = probe_inputs();
  ASSERT_EQ(xs.size(), 2673u);
  int not_exact = 0;
  for (float x : xs) {
    const int want = kernel_floor_log2(x);
    not_exact += want != exact_floor_log2(x);
    ASSERT_EQ(fp4q::pipeline::triton_floor_log2(x), want) << std::hexfloat << x;
  }
  EXPECT_EQ(not_exact, 724);  // the GPU's count ("!= exact floor 724", "!= floor(RN32(log2)) 0")
  // the first rows the probe printed: (x, exact, kernel)
  EXPECT_EQ(fp4q::pipeline::triton_floor_log2(fl(9.094946475628196e-13)), -40);
  EXPECT_EQ(exact_floor_log2(fl(9.094946475628196e-13)), -41);
  EXPECT_EQ(fp4q::pipeline::triton_floor_log2(fl(1.8189876688223805e-12)), -39);
  // the one random value of 2^20 where the GPU left the exact floor
  EXPECT_EQ(fp4q::pipeline::triton_floor_log2(0x1.fffffep-24f), -23);
  EXPECT_EQ(exact_floor_log2(0x1.fffffep-24f), -24);
  // exact powers of two and values just above: the exact floor
  for (int k = -126; k <= 127; ++k) {
    EXPECT_EQ(fp4q::pipeline::triton_floor_log2(std::ldexp(1.0f, k)), k);
    EXPECT_EQ(fp4q::pipeline::triton_floor_log2(std::nextafter(std::ldexp(1.0f, k), INFINITY)), k);
  }
}

// Every float within 96 ulps below each normal power of two (the band where the rounded log2
// reaches k is at most 44 floats wide, for |k| > 64), and well inside the fast path's margin.
TEST(FpQuantTritonLog2, EveryFloatNearPowersOfTwoAgainstLongDouble) {
  int bumped = 0;
  for (int k = -125; k <= 127; ++k) {
    float x = std::ldexp(1.0f, k);
    for (int j = 0; j < 96; ++j) {
      x = std::nextafter(x, 0.0f);
      const int want = kernel_floor_log2(x);
      bumped += want != exact_floor_log2(x);
      ASSERT_EQ(fp4q::pipeline::triton_floor_log2(x), want) << std::hexfloat << x;
    }
    for (float m : {0.99999f, 0.999989f, 0.75f, 0.5000001f}) {
      const float y = std::ldexp(m, k);
      ASSERT_EQ(fp4q::pipeline::triton_floor_log2(y), kernel_floor_log2(y)) << std::hexfloat << y;
    }
  }
  EXPECT_GT(bumped, 5000);
}

// The whole MXFP4 group in fp-quant's rule with the kernel's exponent: s = dv(2^(E-2), 0.75) =
// fl(2^(E-2)·RN(4/3)), q = TZ_E2M1(fl(x·RN(1/s))), x̂ = fl(q·s) (bf16: rounded). A group whose max
// sits in the band takes a scale twice the exact rule's; its small elements then quantize on a
// coarser grid (0.1·amax: 0.5·s_exact under the exact exponent, 0.5·s_kernel = s_exact here).
TEST(FpQuantTritonLog2, Mxfp4GroupScaleFollowsTheKernel) {
  const double kGrid[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  const double kThr[7] = {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0};
  auto ref = [&](const std::vector<float>& g, int E, ComputeDtype d) {
    const float s = fl(std::ldexp(1.0, E - 2) * static_cast<double>(fl(4.0 / 3.0)));
    const double r = static_cast<double>(fl(1.0 / static_cast<double>(s)));  // RN: s is not bf16-exact
    std::vector<float> out(g.size());
    for (size_t j = 0; j < g.size(); ++j) {
      const float v = fl(static_cast<double>(g[j]) * r);
      const double a = std::fabs(static_cast<double>(v));
      int i = 0;
      while (i < 7 && a > kThr[i]) ++i;
      const double q = v > 0 ? kGrid[i] : -kGrid[i];
      out[j] = fp4q::round_to(d, fl(q * static_cast<double>(s)));
    }
    return out;
  };
  const float fracs[8] = {0.1f, -0.05f, 0.3f, -0.55f, 0.9f, 0.02f, -0.7f, 0.15f};
  int bumped = 0, groups_differ = 0;
  for (ComputeDtype d : {ComputeDtype::kF32, ComputeDtype::kBF16}) {
    InputTransform t;
    t.quantize = true;
    t.runtime = ActRuntime::kFpQuant;
    t.format = FormatId::kMXFP4;
    t.dtype = d;
    for (float amax : probe_inputs()) {
      std::vector<float> g(32);
      for (int j = 0; j < 32; ++j) g[static_cast<size_t>(j)] = fl(static_cast<double>(amax) * fracs[j % 8] * (1.0 - j / 64.0));
      g[7] = -amax;
      std::vector<float> got = g;
      fp4q::pipeline::fake_quantize_group(t, got.data(), 32);
      const int E = kernel_floor_log2(amax), Ex = exact_floor_log2(amax);
      const auto want = ref(g, E, d);
      for (size_t j = 0; j < g.size(); ++j)
        ASSERT_EQ(got[j], want[j]) << std::hexfloat << "amax " << amax << " element " << j << " "
                                   << fp4q::compute_dtype_name(d);
      if (E != Ex) {
        ++bumped;
        groups_differ += ref(g, Ex, d) != want;  // the old (exact-floor) rule gives other x̂
      }
    }
  }
  EXPECT_EQ(bumped, 2 * 724);
  EXPECT_EQ(groups_differ, bumped);
}

}  // namespace
