// Umbrella header of the xkv core library (CPU).
#pragma once

#include "xkv/error.hpp"
#include "xkv/scalar.hpp"
#include "xkv/kv_view.hpp"
#include "xkv/rope.hpp"
#include "xkv/rank_policy.hpp"
#include "xkv/grouping.hpp"
#include "xkv/compressor.hpp"
#include "xkv/compressed_cache.hpp"
#include "xkv/svd.hpp"
#include "xkv/version.hpp"
