--- Conversational preference data: the forms of a preference line besides
-- {"prompt": text, "chosen": text, "rejected": text}, each normalised to the
-- examples lualign.data.preference yields (docs/data.md, "Conversational
-- preference data"):
--
--  - TRL's conversational form: "prompt" a list of messages, "chosen" and
--    "rejected" lists of assistant messages; or, with no "prompt", "chosen"
--    and "rejected" whole conversations, split after their common messages;
--  - Anthropic-HH transcripts: "chosen" and "rejected" texts holding
--    "\n\nAssistant:" and no "prompt", split at their common prefix (ending
--    after its last "\n\nAssistant:");
--  - K >= 3 responses to one prompt, "responses" with "votes" (one count per
--    response) or "ranks" (1 = best, ties allowed): every pair of responses
--    that the votes or ranks tell apart becomes one example, with the soft
--    label p = v_i / (v_i + v_j), the share of the two responses' votes that
--    went to the preferred one (p = 1 for ranks).
--
-- Conversational examples carry prompt_messages, chosen_messages and
-- rejected_messages; encode_preference renders them through the tokenizer's
-- chat template as TRL does: the prompt with the generation prompt, and each
-- side as the rest of the render of prompt + side.

local M = {}

local ROLES = {system = true, user = true, assistant = true}

-- A list of messages, checked; `what` names the field in errors.
local function check_messages(h, v, what, only_assistant)
  if type(v) ~= "table" or (next(v) ~= nil and v[1] == nil) then
    h.problem("field %q must be an array of messages, got %s", what, h.typename(v))
  end
  if #v == 0 then h.problem("field %q is empty", what) end
  if #v ~= h.count_keys(v) then h.problem("field %q must be an array", what) end
  local out = {}
  for i, m in ipairs(v) do
    if type(m) ~= "table" or m[1] ~= nil or next(m) == nil then
      h.problem("%s[%d] must be an object, got %s", what, i, h.typename(m))
    end
    if type(m.role) ~= "string" or not ROLES[m.role] then
      h.problem("%s[%d]: role must be system, user or assistant, got %s", what, i, h.short(m.role))
    end
    if only_assistant and m.role ~= "assistant" then
      h.problem("%s[%d]: a response must hold assistant messages, got role %q", what, i, m.role)
    end
    if type(m.content) ~= "string" then
      h.problem("%s[%d]: field \"content\" must be a string, got %s", what, i, h.typename(m.content))
    end
    if not m.content:find("%S") then h.problem("%s[%d]: field \"content\" is empty", what, i) end
    if not utf8.len(m.content) then h.problem("%s[%d]: field \"content\" is not valid UTF-8", what, i) end
    out[i] = {role = m.role, content = m.content}
  end
  return out
end

local function is_messages(v) return type(v) == "table" and type(v[1]) == "table" end

local function same_message(a, b) return a.role == b.role and a.content == b.content end

-- The text of a message list for display and logs: the last message's content.
local function last_content(list) return list[#list].content end

-- Anthropic-HH: split two transcripts at their common prefix.
local HH_MARK = "\n\nAssistant:"

--- True when obj (a decoded preference line) is one of the forms this module reads.
function M.handles(obj)
  return obj.responses ~= nil or is_messages(obj.prompt) or is_messages(obj.chosen) or is_messages(obj.rejected)
    or (obj.prompt == nil and type(obj.chosen) == "string" and type(obj.rejected) == "string"
      and obj.chosen:find(HH_MARK, 1, true) ~= nil and obj.rejected:find(HH_MARK, 1, true) ~= nil)
end

local function split_transcripts(h, chosen, rejected)
  if chosen == rejected then h.problem("\"chosen\" and \"rejected\" are the same transcript") end
  local n = 0
  while n < #chosen and n < #rejected and chosen:byte(n + 1) == rejected:byte(n + 1) do n = n + 1 end
  local cut = n
  local pos, last = 1, nil
  while true do   -- the last assistant marker inside the common prefix
    local a, b = chosen:find(HH_MARK, pos, true)
    if not a or b > n then break end
    last, pos = b, a + 1
  end
  if last then cut = last end
  -- keep whole UTF-8 characters on both sides of the cut
  while cut > 0 and cut < #chosen and (chosen:byte(cut + 1) & 0xC0) == 0x80 do cut = cut - 1 end
  local prompt, c, r = chosen:sub(1, cut), chosen:sub(cut + 1), rejected:sub(cut + 1)
  if not prompt:find("%S") then h.problem("\"chosen\" and \"rejected\" share no prompt to split at") end
  if not c:find("%S") or not r:find("%S") then
    h.problem("\"chosen\" and \"rejected\" do not differ after their common prefix")
  end
  return prompt, c, r
end

-- Responses of a K-way line: texts, or lists of assistant messages.
local function read_response(h, v, i, conversational)
  if conversational then return check_messages(h, v, string.format("responses[%d]", i), true) end
  if type(v) ~= "string" or not v:find("%S") then
    h.problem("responses[%d] must be a non-empty string (or a list of assistant messages)", i)
  end
  if not utf8.len(v) then h.problem("responses[%d] is not valid UTF-8", i) end
  return v
end

local function read_counts(h, obj, key, k)
  local v = obj[key]
  if type(v) ~= "table" or #v ~= k or h.count_keys(v) ~= k then
    h.problem("field %q must be an array with one number per response (%d), got %s", key, k, h.typename(v))
  end
  local out = {}
  for i = 1, k do
    local n = v[i]
    if type(n) ~= "number" or n ~= n or n < 0 or n ~= math.floor(n) or n >= 2^53 then
      h.problem("field %q: entry %d must be a non-negative integer, got %s", key, i, h.short(n))
    end
    out[i] = math.tointeger(n)
  end
  return out
end

-- K responses with votes or ranks -> the list of pair examples.
local function expand_responses(h, obj, known)
  local prompt_msgs = is_messages(obj.prompt) and check_messages(h, obj.prompt, "prompt") or nil
  local prompt = prompt_msgs and last_content(prompt_msgs) or h.check_text(obj, "prompt")
  if type(obj.responses) ~= "table" or #obj.responses < 2 then
    h.problem("field \"responses\" must be an array of at least 2 responses")
  end
  local k = #obj.responses
  if h.count_keys(obj.responses) ~= k then h.problem("field \"responses\" must be an array") end
  local conversational = is_messages(obj.responses[1])
  local resp = {}
  for i, v in ipairs(obj.responses) do resp[i] = read_response(h, v, i, conversational) end
  if (obj.votes == nil) == (obj.ranks == nil) then h.problem("give \"votes\" or \"ranks\" (one of them) with \"responses\"") end
  local votes = obj.votes ~= nil and read_counts(h, obj, "votes", k) or nil
  local ranks = obj.ranks ~= nil and read_counts(h, obj, "ranks", k) or nil
  local meta = h.extras(obj, known)
  local pairs_ = {}
  for i = 1, k - 1 do
    for j = i + 1, k do
      local a, b, p, v
      if votes then
        local vi, vj = votes[i], votes[j]
        if vi ~= vj then
          a, b = vi > vj and i or j, vi > vj and j or i
          p = math.max(vi, vj) / (vi + vj)
          v = {math.max(vi, vj), math.min(vi, vj)}
        end
      elseif ranks[i] ~= ranks[j] then
        a, b = ranks[i] < ranks[j] and i or j, ranks[i] < ranks[j] and j or i
        p = 1.0
      end
      if a then
        local ex = {prompt = prompt, soft = votes ~= nil, p = p + 0.0, p_raw = p + 0.0, votes = v, votes_raw = v,
          flipped = false, pair = {a, b}, meta = meta}
        if conversational or prompt_msgs then
          ex.prompt_messages = prompt_msgs or {{role = "user", content = prompt}}
          ex.chosen_messages = conversational and resp[a] or {{role = "assistant", content = resp[a]}}
          ex.rejected_messages = conversational and resp[b] or {{role = "assistant", content = resp[b]}}
          ex.chosen, ex.rejected = last_content(ex.chosen_messages), last_content(ex.rejected_messages)
        else
          ex.chosen, ex.rejected = resp[a], resp[b]
        end
        pairs_[#pairs_ + 1] = ex
      end
    end
  end
  if #pairs_ == 0 then h.problem("the %s tell no two responses apart: no pair to learn from", votes and "votes" or "ranks") end
  return pairs_
end

--- Validates a preference line in one of this module's forms.  h holds the
-- JSONL reader's helpers (problem, typename, short, count_keys, check_text,
-- extras); finish(ex) applies the soft label ("p" or "votes") and margin as
-- for plain pairs.  Returns one example, or for "responses" a list of them
-- (field `expanded`).
function M.check_preference(h, obj, known, finish)
  if obj.responses ~= nil then
    local k = {}
    for key in pairs(known) do k[key] = true end
    k.responses, k.ranks = true, true
    if obj.chosen ~= nil or obj.rejected ~= nil then h.problem("give either \"responses\" or \"chosen\"/\"rejected\", not both") end
    if obj.p ~= nil or obj.margin ~= nil then h.problem("\"p\" and \"margin\" do not apply to \"responses\"") end
    return {expanded = expand_responses(h, obj, k)}
  end
  local ex
  if is_messages(obj.chosen) or is_messages(obj.rejected) or is_messages(obj.prompt) then
    local chosen = check_messages(h, obj.chosen, "chosen")
    local rejected = check_messages(h, obj.rejected, "rejected")
    local prompt
    if obj.prompt ~= nil then
      prompt = check_messages(h, obj.prompt, "prompt")
      for _, side in ipairs({{"chosen", chosen}, {"rejected", rejected}}) do
        for i, m in ipairs(side[2]) do
          if m.role ~= "assistant" then
            h.problem("%s[%d]: with a \"prompt\", a response holds assistant messages, got role %q", side[1], i, m.role)
          end
        end
      end
    else   -- implicit prompt: the messages both conversations start with
      local n = 0
      while n < #chosen and n < #rejected and same_message(chosen[n + 1], rejected[n + 1]) do n = n + 1 end
      if n == 0 then h.problem("\"chosen\" and \"rejected\" share no first message to take as the prompt") end
      if n == #chosen or n == #rejected then h.problem("\"chosen\" and \"rejected\" do not differ after their common messages") end
      prompt = table.move(chosen, 1, n, 1, {})
      chosen = table.move(chosen, n + 1, #chosen, 1, {})
      rejected = table.move(rejected, n + 1, #rejected, 1, {})
    end
    ex = {prompt = last_content(prompt), chosen = last_content(chosen), rejected = last_content(rejected),
      prompt_messages = prompt, chosen_messages = chosen, rejected_messages = rejected}
  else
    local chosen, rejected = h.check_text(obj, "chosen"), h.check_text(obj, "rejected")
    local prompt, c, r = split_transcripts(h, chosen, rejected)
    ex = {prompt = prompt, chosen = c, rejected = r, split_at = #prompt}
  end
  return finish(ex)
end

----------------------------------------------------------------------------
-- Encoding

local function concat(a, b)
  local out = table.move(a, 1, #a, 1, {})
  return table.move(b, 1, #b, #out + 1, out)
end

-- The chat template's text of messages (tokenize = false).
local function render(tok, messages, gen)
  if type(tok.apply_chat_template) ~= "function" then
    error("conversational preference examples need a tokenizer with apply_chat_template", 0)
  end
  return tok:apply_chat_template(messages, {add_generation_prompt = gen, tokenize = false})
end

--- Encodes a conversational preference example as encode_preference does a
-- plain one: {prompt = ids, chosen = ids, rejected = ids}.  The prompt is
-- the render of prompt_messages with the generation prompt; each side is
-- what the render of prompt + side adds after it (its end-of-turn included,
-- so no EOS is appended).
function M.encode_preference(tok, ex)
  local prompt_text = render(tok, ex.prompt_messages, true)
  local function side(messages, name)
    local full = render(tok, concat(ex.prompt_messages, messages), false)
    if full:sub(1, #prompt_text) ~= prompt_text then
      error(string.format("line %s: the chat template renders the prompt differently once the %s response follows, "
        .. "so the response cannot be cut from it", tostring(ex.line), name), 0)
    end
    return tok:encode(full:sub(#prompt_text + 1))
  end
  return {prompt = tok:encode(prompt_text), chosen = side(ex.chosen_messages, "chosen"),
    rejected = side(ex.rejected_messages, "rejected"), example = ex}
end

return M
