--- Autoregressive generation for decoder models (model:generate).
--
--     local out = model:generate(prompts, {max_new_tokens = 32, temperature = 0.7, top_p = 0.9,
--                                          eos_id = tok.eos_id, return_logprobs = true})
--
-- prompts: a list of Lua lists of 0-based ids (lengths may differ), or a
-- (B, T) integer tensor.  Rows are left-padded, with an attention mask and
-- per-row positions so that padding changes nothing.  opts:
--   max_new_tokens (32); temperature (1; 0 = greedy); top_k (0 = off);
--   top_p (1 = off); eos_id (stop a row when it is produced); pad_id (what
--   finished rows get; default eos_id or 0); use_cache (true): keys and values
--   of earlier positions are kept, so each step runs one position;
--   return_logprobs: log-probabilities of the chosen tokens under
--   softmax(logits / temperature).
-- Returns a table: tokens (B, N) int64, logprobs (B, N) float32 (0 after a
-- row ended) when asked, lengths (tokens per row, EOS included),
-- sequences (Lua lists of each row's tokens), finished (whether EOS came),
-- prompt_length P, and batch: each prompt and its response as one left-padded
-- row, ready for a forward pass over what was generated (see prompt_response).

local core = require "lualign.core"
local util = require "lualign.util"

-- Left-pads the prompts: ids (B, P), mask (B, P) of 1/0, and the lists.
local function left_pad(prompts, pad)
  local rows = {}
  if core.is_tensor(prompts) then
    if prompts:dim() ~= 2 then util.error("generate: prompt tensor must be (batch, time)") end
    rows = prompts:long():totable()
  else
    rows = prompts
  end
  local B, P = #rows, 0
  if B == 0 then util.error("generate: no prompts") end
  for b = 1, B do
    if type(rows[b]) ~= "table" or #rows[b] == 0 then util.error("generate: prompt " .. b .. " is empty") end
    P = math.max(P, #rows[b])
  end
  local ids, mask = {}, {}
  for b = 1, B do
    local row, m, n = {}, {}, #rows[b]
    for t = 1, P do
      local src = t - (P - n)
      row[t] = src >= 1 and rows[b][src] or pad
      m[t] = src >= 1 and 1 or 0
    end
    ids[b], mask[b] = row, m
  end
  return ids, mask, B, P
end

-- Positions that start at 0 on each row's first real token.
local function positions_of(mask)
  local pos = {}
  for b, m in ipairs(mask) do
    local row, n = {}, -1
    for t = 1, #m do
      if m[t] == 1 then n = n + 1 end
      row[t] = math.max(n, 0)
    end
    pos[b] = row
  end
  return pos
end

-- The prompts and what was generated as one batch of left-padded rows of
-- P + N tokens: ids, attention_mask (0 on padding and after a row's end),
-- position_ids (counting real tokens, as generation did), response_mask (B, N)
-- (1 on the tokens a row generated, EOS included), and for sequence log-probs
-- of the responses targets (ids shifted left by one) with target_mask (1 where
-- the target is a generated token).  The hidden states that predict the
-- response tokens are columns P .. P + N - 1.
local function prompt_response(prompt_ids, prompt_mask, tokens, lengths, P, N)
  local ids, mask, response, targets, target_mask = {}, {}, {}, {}, {}
  for b = 1, #prompt_ids do
    local row, m, r = table.move(prompt_ids[b], 1, P, 1, {}), table.move(prompt_mask[b], 1, P, 1, {}), {}
    for t = 1, N do
      row[P + t], r[t] = tokens[b][t], t <= lengths[b] and 1 or 0
      m[P + t] = r[t]
    end
    local tgt, tm = {}, {}
    for t = 1, P + N do
      tgt[t] = row[t + 1] or 0
      tm[t] = (t >= P and t < P + N and r[t - P + 1] == 1) and 1 or 0
    end
    ids[b], mask[b], response[b], targets[b], target_mask[b] = row, m, r, tgt, tm
  end
  return {ids = core.tensor(ids, "int64"), attention_mask = core.tensor(mask, "float32"),
          position_ids = core.tensor(positions_of(mask), "int64"), response_mask = core.tensor(response, "float32"),
          targets = core.tensor(targets, "int64"), target_mask = core.tensor(target_mask, "float32"),
          prompt_length = P, response_length = N}
end

local function generate(model, prompts, opts)
  opts = util.check_options("generate", opts, {"max_new_tokens", "temperature", "top_k", "top_p", "eos_id",
                                               "pad_id", "use_cache", "return_logprobs"})
  local max_new = opts.max_new_tokens or 32
  local temperature = opts.temperature or 1.0
  local eos = opts.eos_id
  local pad = opts.pad_id or eos or 0
  local use_cache = opts.use_cache ~= false
  local ids, mask, B, P = left_pad(prompts, pad)
  local n_positions = model.config.n_positions
  if P + max_new > n_positions then
    util.error(string.format("generate: prompt (%d) + max_new_tokens (%d) exceeds n_positions (%d)",
      P, max_new, n_positions))
  end
  local sample_opts = {temperature = temperature, top_k = opts.top_k or 0, top_p = opts.top_p or 1.0}
  local _ <close> = require("lualign").no_grad()
  local was_training = model.training
  model:eval()
  local _restore <close> = setmetatable({}, {__close = function() model:train(was_training) end})

  -- The full key mask: prompt padding is 0, generated positions 1.
  local full_mask = {}
  for b = 1, B do
    local row = {}
    for t = 1, P + max_new do row[t] = t <= P and mask[b][t] or 1 end
    full_mask[b] = row
  end
  local key_mask = core.tensor(full_mask, "float32")
  local pos = positions_of(mask)
  local next_pos = {}
  for b = 1, B do next_pos[b] = pos[b][P] + 1 end

  local seq_ids = core.tensor(ids, "int64")
  local cache = use_cache and model:new_cache(B, P + max_new) or nil
  local function last_logits(step_ids, step_pos, length)
    local h = model:hidden(step_ids, {attention_mask = key_mask:narrow(2, 1, length),
                                      position_ids = step_pos, cache = cache})
    return model:logits(h:select(2, -1))
  end

  local tokens, logprobs, lengths, finished, sequences = {}, {}, {}, {}, {}
  for b = 1, B do tokens[b], logprobs[b], lengths[b], finished[b], sequences[b] = {}, {}, 0, false, {} end
  local logits = last_logits(seq_ids, core.tensor(pos, "int64"), P)
  local n_done = 0
  for step = 1, max_new do
    local next_ids, lp = core.nn.sample(logits, sample_opts)
    local chosen, chosen_lp = next_ids:totable(), lp:totable()
    for b = 1, B do
      if finished[b] then
        chosen[b], chosen_lp[b] = pad, 0.0
      else
        lengths[b] = lengths[b] + 1
        sequences[b][#sequences[b] + 1] = chosen[b]
        if eos and chosen[b] == eos then finished[b] = true; n_done = n_done + 1 end
      end
      tokens[b][step], logprobs[b][step] = chosen[b], chosen_lp[b]
    end
    if n_done == B or step == max_new then break end
    local column = {}
    for b = 1, B do column[b] = {chosen[b]} end
    local step_pos = {}
    for b = 1, B do step_pos[b] = {next_pos[b]}; next_pos[b] = next_pos[b] + 1 end
    if use_cache then
      logits = last_logits(core.tensor(column, "int64"), core.tensor(step_pos, "int64"), P + step)
    else
      for b = 1, B do ids[b][#ids[b] + 1] = chosen[b]; pos[b][#pos[b] + 1] = step_pos[b][1] end
      logits = last_logits(core.tensor(ids, "int64"), core.tensor(pos, "int64"), P + step)
    end
  end
  local out = {
    tokens = core.tensor(tokens, "int64"),
    lengths = lengths, finished = finished, sequences = sequences,
    prompt_length = P,
    batch = prompt_response(ids, mask, tokens, lengths, P, #tokens[1]),
  }
  if opts.return_logprobs then out.logprobs = core.tensor(logprobs, "float32") end
  return out
end

return generate
