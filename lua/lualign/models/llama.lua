--- lualign.models.llama: the Llama-family decoder (Llama, Mistral, Qwen2, Qwen3).
--
--     local model = la.models.from_config{model_type = "llama", vocab_size = 256,
--       hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2,
--       num_attention_heads = 4, num_key_value_heads = 2}
--     local logits = model(ids)                     -- ids (B, T) int64 -> (B, T, V)
--     local model = la.models.from_pretrained("SmolLM2-135M")   -- a Hugging Face folder
--
-- One decoder for the four families; their differences come from the config
-- (keys and meanings as in Hugging Face's config.json, checked by
-- lualign.models.hf): pre-norm blocks x + attn(rmsnorm(x)), x + mlp(rmsnorm(x));
-- RMSNorm; rotary position embeddings (rotate-half) with rope_theta and
-- rope_scaling (linear, llama3); grouped-query attention with
-- num_key_value_heads; a SwiGLU MLP (down(silu(gate(x)) * up(x))); biases on
-- q/k/v (Qwen2, attention_bias), on o_proj (attention_bias) and in the MLP
-- (mlp_bias); Qwen3's per-head RMSNorm on q and k before the rotation;
-- Mistral's sliding window; a tied or untied LM head.  Parameter names are
-- Hugging Face's (model.layers.0.self_attn.q_proj.weight, ...), so a
-- checkpoint maps one to one; layer i is model.model.layers[i + 1] in Lua.

local core = require "lualign.core"
local nn = require "lualign.nn"
local util = require "lualign.util"
local gpt = require "lualign.models.gpt"
local F = nn.functional

local llama = {}

----------------------------------------------------------------------------
-- Rotary embedding frequencies

--- The inverse frequencies (a Lua list of head_dim / 2 numbers) of the
-- rotary embedding: rope_theta^(-2i / head_dim), rescaled by rope_scaling
-- ("linear": divided by factor; "llama3": long wavelengths divided by factor,
-- short ones kept, a smooth blend between).  Computed in double precision.
function llama.inv_freq(cfg)
  local D = cfg.head_dim
  local out = {}
  for i = 1, D // 2 do out[i] = 1 / cfg.rope_theta ^ ((2 * (i - 1)) / D) end
  local s = cfg.rope_scaling
  if s and s.rope_type == "linear" then
    for i = 1, #out do out[i] = out[i] / s.factor end
  elseif s and s.rope_type == "llama3" then
    local old = s.original_max_position_embeddings
    local low_wavelen, high_wavelen = old / s.low_freq_factor, old / s.high_freq_factor
    for i = 1, #out do
      local f = out[i]
      local wavelen = 2 * math.pi / f
      if wavelen > low_wavelen then
        out[i] = f / s.factor
      elseif wavelen >= high_wavelen then
        local smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        out[i] = (1 - smooth) * f / s.factor + smooth * f
      end
    end
  end
  return out
end

----------------------------------------------------------------------------
--- Multi-head attention with grouped-query heads and rotary embeddings:
-- q_proj, k_proj, v_proj, o_proj (and q_norm, k_norm for Qwen3).
local Attention = nn.Module:extend("LlamaAttention")
llama.Attention = Attention

function Attention:init(cfg)
  local C, H, Hkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  rawset(self, "n_head", H)
  rawset(self, "n_kv_head", Hkv)
  rawset(self, "head_dim", D)
  local qkv_bias = cfg.model_type == "qwen2" or cfg.attention_bias == true
  self.q_proj = nn.Linear(C, H * D, {bias = qkv_bias})
  self.k_proj = nn.Linear(C, Hkv * D, {bias = qkv_bias})
  self.v_proj = nn.Linear(C, Hkv * D, {bias = qkv_bias})
  self.o_proj = nn.Linear(H * D, C, {bias = cfg.attention_bias == true})
  if cfg.model_type == "qwen3" then
    self.q_norm = nn.RMSNorm(D, {eps = cfg.rms_norm_eps})
    self.k_norm = nn.RMSNorm(D, {eps = cfg.rms_norm_eps})
  end
end

--- x (B, T, C) -> (B, T, C).  o: positions (B, T), rope (the table), and as
-- for the GPT's attention key_mask, segments, cache; window (sliding window).
function Attention:forward(x, o)
  local B, T = x:size(1), x:size(2)
  local H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
  local q = self.q_proj(x):view(B, T, H, D)
  local k = self.k_proj(x):view(B, T, Hkv, D)
  local v = self.v_proj(x):view(B, T, Hkv, D)
  if self.q_norm then q, k = self.q_norm(q), self.k_norm(k) end
  q = F.rope_(q, o.positions, o.rope):transpose(2, 3)
  k = F.rope_(k, o.positions, o.rope):transpose(2, 3)
  v = v:transpose(2, 3)
  local offset, key_mask = 0, o.key_mask
  local cache = o.cache
  if cache then
    offset = cache.len
    if offset + T > cache.k:size(3) then
      util.error(string.format("attention cache holds %d positions; %d more do not fit",
        cache.k:size(3), offset + T - cache.k:size(3)))
    end
    local previous = core.set_grad_enabled(false)
    cache.k:narrow(3, offset + 1, T):copy(k)
    cache.v:narrow(3, offset + 1, T):copy(v)
    core.set_grad_enabled(previous)
    k, v = cache.k:narrow(3, 1, offset + T), cache.v:narrow(3, 1, offset + T)
    if key_mask then key_mask = key_mask:narrow(2, 1, offset + T) end
  end
  local y = F.attention(q, k, v, {causal = true, offset = offset, key_mask = key_mask,
                                  segments = o.segments, window = o.window})
  return self.o_proj(y:transpose(2, 3):reshape(B, T, H * D))
end

function Attention:extra_repr()
  return string.format("heads=%d, kv_heads=%d, head_dim=%d", self.n_head, self.n_kv_head, self.head_dim)
end

--- The SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x)).
local MLP = nn.Module:extend("LlamaMLP")
llama.MLP = MLP

function MLP:init(cfg)
  local C, I, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias == true
  self.gate_proj = nn.Linear(C, I, {bias = bias})
  self.up_proj = nn.Linear(C, I, {bias = bias})
  self.down_proj = nn.Linear(I, C, {bias = bias})
end

function MLP:forward(x)
  local down = self.down_proj
  if getmetatable(down) ~= nn.Linear then   -- an adapted layer (LoRA) computes itself
    return down(F.swiglu(self.gate_proj(x), self.up_proj(x)))
  end
  return F.swiglu_linear(self.gate_proj(x), self.up_proj(x), down.weight, down.bias)
end

--- A decoder layer: x + self_attn(input_layernorm(x)), then
-- x + mlp(post_attention_layernorm(x)).
local Layer = nn.Module:extend("LlamaDecoderLayer")
llama.Layer = Layer

function Layer:init(cfg)
  self.self_attn = Attention(cfg)
  self.mlp = MLP(cfg)
  self.input_layernorm = nn.RMSNorm(cfg.hidden_size, {eps = cfg.rms_norm_eps})
  self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, {eps = cfg.rms_norm_eps})
end

function Layer:forward(x, o)
  return gpt.pre_norm_block(x, o, self.input_layernorm, self.self_attn, self.post_attention_layernorm, self.mlp)
end

--- The trunk, named as Hugging Face's LlamaModel: embed_tokens, layers, norm.
local Trunk = nn.Module:extend("LlamaModel")
llama.Trunk = Trunk

function Trunk:init(cfg)
  self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
  local layers = {}
  for i = 1, cfg.num_hidden_layers do layers[i] = Layer(cfg) end
  self.layers = nn.ModuleList(layers)
  self.norm = nn.RMSNorm(cfg.hidden_size, {eps = cfg.rms_norm_eps})
end

----------------------------------------------------------------------------
--- The causal language model (Hugging Face's *ForCausalLM): model (the
-- trunk), lm_head when untied, value_head and reward_head when asked.
local Llama = nn.Module:extend("LlamaForCausalLM")
llama.Llama = Llama

function Llama:init(cfg)
  cfg = require("lualign.models.hf").check_config(cfg)
  rawset(self, "config", cfg)
  self.model = Trunk(cfg)
  if not cfg.tie_word_embeddings then
    self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, {bias = false})
  end
  if cfg.value_head then self.value_head = nn.Linear(cfg.hidden_size, 1) end
  if cfg.reward_head then self.reward_head = nn.Linear(cfg.hidden_size, 1) end
  self:reset_parameters()
end

--- Hugging Face's initialisation: linear and embedding weights
-- N(0, initializer_range), biases 0, norm weights 1.
function Llama:reset_parameters()
  if nn.init_skipped() then return end
  local std = self.config.initializer_range
  local previous = core.set_grad_enabled(false)
  for _, p in ipairs(self:named_parameters()) do
    local name, t = p[1], p[2]
    if name:match("norm%.weight$") then
      t:fill(1)
    elseif name:match("bias$") then
      t:fill(0)
    else
      t:copy(core.randn(t:shape()) * std)
    end
  end
  core.set_grad_enabled(previous)
end

--- The longest sequence the model takes (max_position_embeddings).
function Llama:max_positions() return self.config.max_position_embeddings end

--- The rotary embedding's cos/sin table covering positions [0, n), rebuilt
-- (doubling) when a longer one is needed; kept outside the module's tensors.
function Llama:rope_table(n)
  local t = rawget(self, "_rope")
  if not t or t:size(2) < n then
    local length = 256
    while length < n do length = length * 2 end
    length = math.min(length, math.max(n, self.config.max_position_embeddings))
    t = F.rope_table(llama.inv_freq(self.config), length)
    rawset(self, "_rope", t)
  end
  return t
end

--- Final hidden states (B, T, C) after the last norm.
-- opts: attention_mask (B, S) of 1/0 over all key positions (padding is 0),
-- segments (B, T) for packed rows, position_ids (B, T) (default: counting
-- from the cache's length), cache (see new_cache).
function Llama:hidden(ids, opts)
  opts = opts or {}
  local cfg = self.config
  if not core.is_tensor(ids) or ids:dim() ~= 2 then
    util.error("llama: ids must be a (batch, time) tensor, got " ..
      (core.is_tensor(ids) and "shape " .. ids:shape_str() or type(ids)))
  end
  local B, T = ids:size(1), ids:size(2)
  local cache = opts.cache
  local pos0 = cache and cache.len or 0
  local positions = opts.position_ids
  local last
  if positions then
    last = positions:max():item()
  else
    positions = core.arange(pos0, pos0 + T):unsqueeze(1):expand(B, T)
    last = pos0 + T - 1
  end
  if last >= cfg.max_position_embeddings or pos0 + T > cfg.max_position_embeddings then
    util.error(string.format("llama: position %d exceeds max_position_embeddings = %d",
      math.max(last, pos0 + T - 1), cfg.max_position_embeddings))
  end
  local o = {positions = positions, rope = self:rope_table(last + 1), key_mask = opts.attention_mask,
             segments = opts.segments, window = cfg.model_type == "mistral" and cfg.sliding_window or nil}
  local x = F.embedding(ids, self.model.embed_tokens.weight)
  x = gpt.run_blocks(self, self.model.layers, x, o, cache, pos0)
  return self.model.norm(x)
end

-- Errors inside (an id out of range, a mask of the wrong shape) are raised
-- at the line that called the model, not inside the library.
Llama.hidden = util.raise_at_caller(Llama.hidden)

--- The LM head's weight (V, C): lm_head.weight, or embed_tokens.weight when tied.
function Llama:head_weight()
  return self.lm_head and self.lm_head.weight or self.model.embed_tokens.weight
end

--- A key/value cache for incremental decoding of B rows up to `length`
-- positions: per layer (B, num_key_value_heads, length, head_dim), so
-- grouped-query models keep only their key/value heads.
function Llama:new_cache(B, length)
  local cfg = self.config
  local layers = {}
  for i = 1, cfg.num_hidden_layers do
    layers[i] = {k = core.zeros(B, cfg.num_key_value_heads, length, cfg.head_dim),
                 v = core.zeros(B, cfg.num_key_value_heads, length, cfg.head_dim), len = 0}
  end
  return {len = 0, layers = layers}
end

--- Writes the model as a Hugging Face folder; see lualign.models.hf.save_pretrained.
function Llama:save_pretrained(dir, opts)
  return require("lualign.models.hf").save_pretrained(self, dir, opts)
end

--- Human-readable size: parameters counted once (tied weights once).
function Llama:extra_repr()
  local c = self.config
  return string.format("%s: layers=%d, width=%d, heads=%d/%d kv, head_dim=%d, mlp=%d, vocab=%d, " ..
    "context=%d, tied=%s, params=%.2fM", c.model_type, c.num_hidden_layers, c.hidden_size,
    c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size, c.vocab_size,
    c.max_position_embeddings, tostring(c.tie_word_embeddings), self:num_parameters() / 1e6)
end

--- Mean cross-entropy of the next-token predictions for ids against targets
-- (B, T) (-100, or opts.ignore_index, = ignore), and the number of counted
-- tokens.  Logits-free: rows of logits are made in chunks and recomputed in
-- the backward pass (lualign.loss.sequence_logprobs_hidden), so the (B, T, V)
-- logits and their gradient never exist -- two buffers of 200 MB each at a
-- 49152-token vocabulary and 1024 tokens.  opts: as for hidden(), plus
-- ignore_index and label_smoothing (which takes the logits path).
function Llama:loss(ids, targets, opts)
  opts = opts or {}
  if opts.label_smoothing and opts.label_smoothing ~= 0 then return gpt.GPT.loss(self, ids, targets, opts) end
  local loss = require "lualign.loss"
  local mask = targets:ne(opts.ignore_index or -100):float()
  local count = math.tointeger(mask:sum():item())
  local sums = loss.sequence_logprobs_hidden(self:hidden(ids, opts), self:head_weight(), targets, mask)
  return -sums:sum() / math.max(count, 1), count
end

-- The rest of the call protocol is the GPT's, written against hidden() and
-- head_weight(): forward, logits, log-probs, heads, generation.
for _, name in ipairs({"forward", "logits", "sequence_logprobs", "token_logprobs",
                       "values", "rewards", "generate"}) do
  Llama[name] = gpt.GPT[name]
end

return setmetatable(llama, {__call = function(_, cfg) return Llama(cfg) end})
