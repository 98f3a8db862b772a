--- lualign.chat_template: a model's own chat template (the Jinja text of
-- its tokenizer_config.json) rendered for a conversation, as transformers'
-- apply_chat_template does, and the assistant-token mask: which tokens of
-- the result the assistant wrote, for a completion-only loss.
--
-- The mask comes from character spans of the rendered text:
--  - a template with {% generation %} blocks marks them itself (as in
--    transformers' return_assistant_tokens_mask);
--  - otherwise, for each assistant message i, the conversation before it is
--    rendered with the generation prompt (P) and the conversation up to it
--    without (T): the assistant's span runs from the end of P to the end of
--    T, so it holds what the model writes after the prompt, including the
--    end-of-turn marker.  When the template renders earlier turns
--    differently once later ones follow (Qwen3 drops their reasoning), the
--    span is found by the message's content in the full text instead, and
--    extended by what follows the content both in T and in the full text
--    (the end-of-turn marker; where the two part, up to the first tag <...>
--    or newline of what they share).
-- A character span becomes tokens by comparing the ids of the whole text
-- with the ids of the text up to each boundary: the first token they
-- disagree on lies across the boundary, and counts as the assistant's.

local jinja = require "lualign.jinja"

local M = {}

-- Compiled templates, by source text (shared: a template is immutable).
local compiled = setmetatable({}, {__mode = "v"})

local function compile(src)
  local t = compiled[src]
  if not t then
    t = jinja.compile(src)
    compiled[src] = t
  end
  return t
end

local function sub_list(list, n)
  local out = {}
  for i = 1, n do out[i] = list[i] end
  return out
end

--- Renders messages (list of {role, content, ...}) with template src.
-- base: the context's other variables (special tokens, tools, ...).
-- Returns the text and the {% generation %} spans.
function M.render(src, messages, add_generation_prompt, base)
  local ctx = {}
  for k, v in pairs(base or {}) do ctx[k] = v end
  ctx.messages = messages
  ctx.add_generation_prompt = add_generation_prompt and true or false
  local text, info = compile(src):render(ctx)
  return text, info.generation
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

--- The character spans (0-based start, exclusive stop) of the assistant's
-- messages in full (the render of all messages with add_generation_prompt).
function M.assistant_spans(src, messages, full, add_generation_prompt, base)
  if src:find("{%%[-+]?%s*generation%s*[-+]?%%}") then
    local _, gen = M.render(src, messages, add_generation_prompt, base)
    local spans = {}
    for i, g in ipairs(gen) do spans[i] = {g[1], g[2]} end
    return spans
  end
  local spans, from = {}, 0
  for i, m in ipairs(messages) do
    if m.role == "assistant" then
      local p = M.render(src, sub_list(messages, i - 1), true, base)
      local t = M.render(src, sub_list(messages, i), false, base)
      local start = full:sub(1, #p) == p and #p or nil
      if start and full:sub(1, #t) == t and #t >= start then
        spans[#spans + 1] = {start, #t}
        from = #t
      else
        -- history rendered differently: find the content, then what follows it in T
        local content = type(m.content) == "string" and m.content or ""
        local found, cstop
        for _, c in ipairs({content, trim(content)}) do
          if c ~= "" then
            local a, b = full:find(c, (start or from) + 1, true)
            if a then found, cstop = a - 1, b; break end
          end
        end
        if not found then
          error(string.format("apply_chat_template: cannot find assistant message %d in the rendered text "
            .. "(the template rewrites it); mark it with {%% generation %%} ... {%% endgeneration %%}", i), 0)
        end
        local stop = cstop
        local tc = content
        if tc == "" or not t:find(tc, 1, true) then tc = trim(content) end
        local last, pos = nil, 1
        while tc ~= "" do   -- the last occurrence of the content in T
          local a2, b2 = t:find(tc, pos, true)
          if not a2 then break end
          last, pos = b2, a2 + 1
        end
        if last then
          -- what follows the content in T and in the full text alike; when
          -- they part (T ends the conversation there, the full text goes
          -- on), the end-of-turn is that common part up to its first tag
          -- (<...>) or newline
          local tail, cont = t:sub(last + 1), full:sub(cstop + 1)
          local k = 0
          while k < #tail and tail:byte(k + 1) == cont:byte(k + 1) do k = k + 1 end
          if k < #tail then
            local common = tail:sub(1, k)
            local tag_end = common:match("^[^<\n]*<[^>]*>()")
            local nl_end = common:match("^[^\n]*\n()")
            local cut = math.min(tag_end or math.huge, nl_end or math.huge)
            k = cut == math.huge and 0 or cut - 1
          end
          stop = cstop + k
        end
        spans[#spans + 1] = {start or found, stop}
        from = stop
      end
    end
  end
  return spans
end

--- The mask over ids (the tokens of text) for character spans: 1 on each
-- token inside a span.  encode(s) gives the ids of a prefix.
function M.mask(text, ids, spans, encode)
  local mask = {}
  for i = 1, #ids do mask[i] = 0 end
  local cache = {}
  local function boundary(b, is_stop)
    if b <= 0 then return 0 end
    if b >= #text then return #ids end
    local key = (is_stop and "s" or "a") .. b
    if cache[key] then return cache[key] end
    local pre = encode(text:sub(1, b))
    local k = 0
    while k < #pre and k < #ids and pre[k + 1] == ids[k + 1] do k = k + 1 end
    local r = k
    if k < #pre and is_stop then r = math.min(k + 1, #ids) end
    cache[key] = r
    return r
  end
  for _, s in ipairs(spans) do
    local a, b = boundary(s[1], false), boundary(s[2], true)
    for i = a + 1, b do mask[i] = 1 end
  end
  return mask
end

return M
