// Umbrella header of xkv::model: GGUF reader, byte-level BPE tokenizer, Llama forward on CPU
// with a plain or xkv-compressed KV cache.
#pragma once

#include "xkv/model/gguf.hpp"
#include "xkv/model/tokenizer.hpp"
#include "xkv/model/config.hpp"
#include "xkv/model/kv_cache.hpp"
#include "xkv/model/llama.hpp"
#include "xkv/model/model_path.hpp"
