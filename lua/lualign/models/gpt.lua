--- lualign.models.gpt: a GPT-2-style decoder.
--
--     local model = la.models.gpt{vocab_size = 256, n_positions = 128, n_embd = 128,
--                                 n_layer = 4, n_head = 4}
--     local logits = model(ids)            -- ids (B, T) int64 -> logits (B, T, V)
--     local out = model:generate({{1, 2, 3}}, {max_new_tokens = 20, temperature = 0})
--
-- Config keys follow Hugging Face's GPT-2 names (vocab_size, n_positions,
-- n_embd, n_layer, n_head, layer_norm_epsilon); lualign adds mlp_ratio (4),
-- norm ("layernorm" | "rmsnorm"), tie_word_embeddings (true), dropout (0),
-- bias (true), value_head and reward_head (false).  Parameter names match
-- Hugging Face's GPT2Model (wte, wpe, h.0.attn.c_attn, ...), so checkpoints
-- map across; block i of model.h is model.h[i + 1] in Lua.

local core = require "lualign.core"
local nn = require "lualign.nn"
local util = require "lualign.util"
local F = nn.functional

local gpt = {}

local REQUIRED = {}
local defaults = {
  vocab_size = REQUIRED, n_positions = REQUIRED, n_embd = REQUIRED, n_layer = REQUIRED, n_head = REQUIRED,
  mlp_ratio = 4, norm = "layernorm", layer_norm_epsilon = 1e-5, tie_word_embeddings = true,
  dropout = 0, bias = true, value_head = false, reward_head = false,
}

local descriptions = {
  vocab_size = "number of token ids", n_positions = "longest sequence (context)",
  n_embd = "width", n_layer = "number of blocks", n_head = "attention heads per block",
  mlp_ratio = "MLP hidden width / n_embd", norm = "'layernorm' or 'rmsnorm'",
  layer_norm_epsilon = "epsilon of the norms", tie_word_embeddings = "LM head shares wte's weight",
  dropout = "dropout probability (training only)", bias = "biases in linear layers and norms",
  value_head = "add a per-token scalar head (PPO value)", reward_head = "add a per-sequence scalar head",
}
gpt.config_keys = descriptions

--- Checks a config and fills in defaults; errors name the key.
function gpt.config(cfg)
  if type(cfg) ~= "table" then util.error("gpt: config must be a table") end
  util.check_options("gpt", cfg, defaults, "config key")
  local out = {}
  for k, v in pairs(cfg) do out[k] = v end
  for k, v in pairs(defaults) do
    if out[k] == nil then
      if v == REQUIRED then
        util.error(string.format("gpt: config key '%s' (%s) is required", k, descriptions[k]))
      end
      out[k] = v
    end
  end
  for _, k in ipairs({"vocab_size", "n_positions", "n_embd", "n_layer", "n_head"}) do
    local v = math.tointeger(out[k])
    if not v or v < 1 then
      util.error(string.format("gpt: %s must be a positive integer (got %s)", k, tostring(out[k])))
    end
    out[k] = v
  end
  if out.n_embd % out.n_head ~= 0 then
    util.error(string.format("gpt: n_embd (%d) must be a multiple of n_head (%d)", out.n_embd, out.n_head))
  end
  if out.norm ~= "layernorm" and out.norm ~= "rmsnorm" then
    util.error("gpt: norm must be 'layernorm' or 'rmsnorm' (got " .. tostring(out.norm) .. ")")
  end
  return out
end

local function make_norm(cfg)
  if cfg.norm == "rmsnorm" then return nn.RMSNorm(cfg.n_embd, {eps = cfg.layer_norm_epsilon}) end
  return nn.LayerNorm(cfg.n_embd, {eps = cfg.layer_norm_epsilon, bias = cfg.bias})
end

----------------------------------------------------------------------------
--- A transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
local Block = nn.Module:extend("Block")
gpt.Block = Block

function Block:init(cfg)
  self.ln_1 = make_norm(cfg)
  self.attn = nn.CausalSelfAttention(cfg.n_embd, cfg.n_head, {bias = cfg.bias, dropout = cfg.dropout})
  self.ln_2 = make_norm(cfg)
  self.mlp = nn.MLP(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, {bias = cfg.bias, dropout = cfg.dropout})
end

--- A pre-norm decoder block's two residual steps, for both model families:
-- x + attn(norm1(x), opts), then that plus mlp(norm2(it)).
function gpt.pre_norm_block(x, opts, norm1, attn, norm2, mlp)
  x = x + attn(norm1(x), opts)
  return x + mlp(norm2(x))
end

function Block:forward(x, opts)
  return gpt.pre_norm_block(x, opts, self.ln_1, self.attn, self.ln_2, self.mlp)
end

----------------------------------------------------------------------------
-- GPT

--- The GPT-2 style decoder; gpt(config) builds one (see the module's documentation).
local GPT = nn.Module:extend("GPT")
gpt.GPT = GPT

function GPT:init(cfg)
  cfg = gpt.config(cfg)
  rawset(self, "config", cfg)
  self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
  self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
  local blocks = {}
  for i = 1, cfg.n_layer do blocks[i] = Block(cfg) end
  self.h = nn.ModuleList(blocks)
  self.ln_f = make_norm(cfg)
  if not cfg.tie_word_embeddings then self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, {bias = false}) end
  if cfg.value_head then self.value_head = nn.Linear(cfg.n_embd, 1) end
  if cfg.reward_head then self.reward_head = nn.Linear(cfg.n_embd, 1) end
  self:reset_parameters()
end

--- GPT-2's initialisation: weights N(0, 0.02), the residual projections
-- (attn.c_proj, mlp.c_proj) N(0, 0.02 / sqrt(2 n_layer)), biases 0, norms 1.
function GPT:reset_parameters()
  if nn.init_skipped() then return end
  local std, residual_std = 0.02, 0.02 / math.sqrt(2 * self.config.n_layer)
  local previous = core.set_grad_enabled(false)
  for _, p in ipairs(self:named_parameters()) do
    local name, t = p[1], p[2]
    if name:match("norm") or name:match("ln_") then
      t:fill(name:match("bias$") and 0 or 1)
    elseif name:match("bias$") then
      t:fill(0)
    elseif name:match("c_proj%.weight$") then
      t:copy(core.randn(t:shape()) * residual_std)
    else
      t:copy(core.randn(t:shape()) * std)
    end
  end
  core.set_grad_enabled(previous)
end

-- The options of hidden(), and a split of opts into those and the rest
-- (checked against `others`, the options the calling method adds).
local HIDDEN_OPTS = {"attention_mask", "position_ids", "segments", "cache"}

local function split_opts(where, opts, others)
  local known = table.move(HIDDEN_OPTS, 1, #HIDDEN_OPTS, 1, {})
  table.move(others, 1, #others, #known + 1, known)
  util.check_options(where, opts, known)
  local hidden, rest = {}, {}
  for _, k in ipairs(HIDDEN_OPTS) do hidden[k] = opts and opts[k] end
  for _, k in ipairs(others) do rest[k] = opts and opts[k] end
  return hidden, rest
end

--- Final hidden states (B, T, C) after ln_f.
-- opts: attention_mask (B, S) of 1/0 over all key positions (padding is 0),
-- segments (B, T) for packed rows, position_ids (B, T), cache (see new_cache).
function GPT:hidden(ids, opts)
  opts = util.check_options("gpt:hidden", opts, HIDDEN_OPTS)
  local cfg = self.config
  if ids:dim() ~= 2 then util.error("gpt: ids must be (batch, time), got shape " .. ids:shape_str()) end
  local T = ids:size(2)
  local cache = opts.cache
  local pos0 = cache and cache.len or 0
  if pos0 + T > cfg.n_positions then
    util.error(string.format("gpt: %d positions exceed n_positions = %d", pos0 + T, cfg.n_positions))
  end
  local x = F.embedding(ids, self.wte.weight)
  if opts.position_ids then
    x = x + F.embedding(opts.position_ids, self.wpe.weight)
  else
    x = x + self.wpe.weight:narrow(1, pos0 + 1, T):float()   -- float32 also when frozen in 16 bits
  end
  x = F.dropout(x, cfg.dropout, self.training)
  x = gpt.run_blocks(self, self.h, x, {key_mask = opts.attention_mask, segments = opts.segments}, cache, pos0)
  return self.ln_f(x)
end

--- Runs x (B, T, C) through a list of blocks, each called as block(x, o); with
-- a KV cache, block i gets o.cache = cache.layers[i] starting at position
-- pos0, and the cache's length grows by T.  The model's activation
-- checkpointing (set_checkpointing) applies: see nn.run_blocks.
function gpt.run_blocks(model, blocks, x, o, cache, pos0)
  local T = x:size(2)
  x = nn.run_blocks(model, blocks._list, x, function(i, block, h)
    if cache then
      o.cache = cache.layers[i]
      cache.layers[i].len = pos0
    end
    return block(h, o)
  end)
  if cache then cache.len = pos0 + T end
  return x
end

-- Errors inside (an id out of range, a mask of the wrong shape) are raised
-- at the line that called the model, not inside the library.
GPT.hidden = util.raise_at_caller(GPT.hidden)

--- Logits (..., V) from hidden states (..., C): the LM head (head_weight()).
function GPT:logits(hidden)
  return F.linear(hidden, self:head_weight())
end

--- ids (B, T) -> logits (B, T, V).  opts as for hidden().
function GPT:forward(ids, opts)
  return self:logits(self:hidden(ids, (split_opts("gpt:forward", opts, {}))))
end

--- Mean cross-entropy of the logits for ids against targets (B, T), the
-- next tokens (-100 = ignore).  opts: as for hidden(), plus ignore_index and
-- label_smoothing.  Returns the loss and the number of counted tokens.
function GPT:loss(ids, targets, opts)
  local hidden_opts, loss_opts = split_opts("gpt:loss", opts, {"ignore_index", "label_smoothing"})
  -- Closing the handles leaves the loss's graph the only holder of the logits,
  -- so its backward pass writes their gradient over them.
  local logits <close> = self:forward(ids, hidden_opts)
  local rows <close> = logits:reshape(-1, logits:size(-1))
  return F.cross_entropy(rows, targets:reshape(-1), loss_opts)
end

--- The LM head's weight (V, C): lm_head.weight, or wte.weight when tied.
function GPT:head_weight()
  return self.lm_head and self.lm_head.weight or self.wte.weight
end

--- Per-sequence log-probs (B,) of targets (B, T) (0-based next tokens) summed
-- over mask (B, T) (nil: every position), from the hidden states and the head
-- weight without ever materialising the (B, T, V) logits
-- (lualign.loss.sequence_logprobs_hidden).  opts: as for hidden(), plus
-- average (mean over the mask instead of the sum), temperature, chunk_rows.
function GPT:sequence_logprobs(ids, targets, mask, opts)
  local loss = require "lualign.loss"
  local hidden_opts, lp_opts = split_opts("gpt:sequence_logprobs", opts, {"average", "temperature", "chunk_rows"})
  return loss.sequence_logprobs_hidden(self:hidden(ids, hidden_opts), self:head_weight(), targets, mask, lp_opts)
end

--- Per-token log-probs (B, T) of targets, masked, logits-free; opts as for
-- hidden(), plus temperature and chunk_rows.
function GPT:token_logprobs(ids, targets, mask, opts)
  local loss = require "lualign.loss"
  local hidden_opts, lp_opts = split_opts("gpt:token_logprobs", opts, {"temperature", "chunk_rows"})
  return loss.token_logprobs_hidden(self:hidden(ids, hidden_opts), self:head_weight(), targets, mask, lp_opts)
end

--- Per-token values (B, T) from the value head.
function GPT:values(hidden)
  if not self.value_head then util.error("model: this model has no value head (config value_head = true)") end
  return self.value_head(hidden):squeeze(-1)
end

--- Index (B,) of each row's last position whose mask is non-zero.
local function last_positions(mask)
  local B, T = mask:size(1), mask:size(2)
  local pos = core.arange(T):float():unsqueeze(1):expand(B, T)
  return (pos * mask:float()):argmax(2)
end

--- One reward per sequence (B,), read at the last non-padding token of
-- attention_mask (B, T) (every position when nil).
function GPT:rewards(hidden, attention_mask)
  if not self.reward_head then util.error("model: this model has no reward head (config reward_head = true)") end
  local r = self.reward_head(hidden):squeeze(-1)
  if not attention_mask then return r:select(2, -1) end
  return r:gather(2, last_positions(attention_mask):unsqueeze(2)):squeeze(2)
end
gpt.last_positions = last_positions

--- A key/value cache for incremental decoding of B rows up to `length` positions.
function GPT:new_cache(B, length)
  local cfg = self.config
  local H = cfg.n_head
  local D = cfg.n_embd // H
  local layers = {}
  for i = 1, cfg.n_layer do
    layers[i] = {k = core.zeros(B, H, length, D), v = core.zeros(B, H, length, D), len = 0}
  end
  return {len = 0, layers = layers}
end

--- The longest sequence the model takes (n_positions).
function GPT:max_positions() return self.config.n_positions end

--- Writes the model as a Hugging Face GPT-2 folder; see lualign.models.hf.save_pretrained.
function GPT:save_pretrained(dir, opts)
  return require("lualign.models.hf").save_pretrained(self, dir, opts)
end

--- Generation; see lualign.models.generate.
function GPT:generate(prompts, opts)
  return require("lualign.models.generate")(self, prompts, opts)
end

--- Human-readable size: parameters counted once (tied weights once).
function GPT:extra_repr()
  local c = self.config
  return string.format("layers=%d, width=%d, heads=%d, vocab=%d, context=%d, params=%.2fM",
    c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.n_positions, self:num_parameters() / 1e6)
end

----------------------------------------------------------------------------
-- Hugging Face GPT-2 checkpoints

-- Conv1D layers store (in, out); lualign's Linear stores (out, in).
local conv1d = {["attn.c_attn.weight"] = true, ["attn.c_proj.weight"] = true,
                ["mlp.c_fc.weight"] = true, ["mlp.c_proj.weight"] = true}

--- Maps a Hugging Face GPT-2 state dict (GPT2Model or GPT2LMHeadModel names)
-- to this model's names, transposing the Conv1D weights.  Returns the mapped
-- dict and the list of names it dropped (attention mask buffers, a tied head).
function gpt.from_hf_state_dict(sd, cfg)
  local out, dropped = {}, {}
  for name, t in pairs(sd) do
    local n = name:gsub("^transformer%.", "")
    local suffix = n:match("^h%.%d+%.(.*)$")
    if suffix == "attn.bias" or suffix == "attn.masked_bias" then
      dropped[#dropped + 1] = name
    elseif n == "lm_head.weight" and (cfg.tie_word_embeddings ~= false) then
      dropped[#dropped + 1] = name
    elseif suffix and conv1d[suffix] then
      out[n] = t:t():contiguous()
    else
      out[n] = t
    end
  end
  table.sort(dropped)
  return out, dropped
end

--- Loads a Hugging Face GPT-2 directory (config.json + model.safetensors);
-- the same as la.models.from_pretrained for a gpt2 folder (lualign.models.hf:
-- config checks, weights read straight into the parameters, generation_config).
-- overrides change config keys (dropout, value_head, reward_head).
function gpt.from_pretrained(dir, overrides)
  return require("lualign.models.hf").from_pretrained(dir, overrides)
end

return setmetatable(gpt, {__call = function(_, cfg) return GPT(cfg) end})
