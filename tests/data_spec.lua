-- lualign.data: JSONL readers (validation, normalisation, errors naming file and
-- line), batching (masks, padding, packing, truncation, shuffling) and the
-- bundled datasets.
local la = require "lualign"
local data = la.data

local FIX = "tests/fixtures/data/"

----------------------------------------------------------------------------
-- A byte-level test double for the tokenizer contract: ids 0-255 are bytes,
-- then <bos> 256, <eos> 257, <pad> 258, <|user|> 259, <|assistant|> 260,
-- <|system|> 261, <|end|> 262.

local BOS, EOS, PAD, USER, ASSISTANT, SYSTEM, END = 256, 257, 258, 259, 260, 261, 262
local ROLE_ID = {user = USER, assistant = ASSISTANT, system = SYSTEM}

local ByteTok = {}
ByteTok.__index = ByteTok

local function byte_tok(opts)
  opts = opts or {}
  local t = setmetatable({vocab_size = 263, bos_id = BOS, eos_id = EOS, pad_id = PAD}, ByteTok)
  if opts.no_pad then t.pad_id = nil end
  if opts.no_eos then t.eos_id = nil end
  if opts.no_bos then t.bos_id = nil end
  return t
end

function ByteTok:encode(s)
  local ids = {}
  for i = 1, #s do ids[i] = s:byte(i) end
  return ids
end

function ByteTok:decode(ids)
  local out = {}
  for _, id in ipairs(ids) do if id < 256 then out[#out + 1] = string.char(id) end end
  return table.concat(out)
end

function ByteTok:apply_chat_template(messages, opts)
  local ids, mask = {}, {}
  for _, m in ipairs(messages) do
    local a = m.role == "assistant" and 1 or 0
    ids[#ids + 1], mask[#mask + 1] = ROLE_ID[m.role], 0
    for _, id in ipairs(self:encode(m.content)) do ids[#ids + 1], mask[#mask + 1] = id, a end
    ids[#ids + 1], mask[#mask + 1] = END, a
  end
  if opts and opts.add_generation_prompt then ids[#ids + 1], mask[#mask + 1] = ASSISTANT, 0 end
  return ids, mask
end

local function bytes(s) return ByteTok.encode(nil, s) end

local function cat(...)
  local out = {}
  for _, list in ipairs({...}) do
    if type(list) == "number" then out[#out + 1] = list
    else for _, x in ipairs(list) do out[#out + 1] = x end end
  end
  return out
end

local function rep(v, n)
  local t = {}
  for i = 1, n do t[i] = v end
  return t
end

----------------------------------------------------------------------------
-- Helpers

local function tmpfile(text)
  local name = os.tmpname()
  local f = assert(io.open(name, "wb"))
  f:write(text)
  f:close()
  return name
end

local function collect(iter)
  local out = {}
  for ex in iter do out[#out + 1] = ex end
  return out
end

local h = require "helpers"
local fails_with = h.fails_with

----------------------------------------------------------------------------

describe("data readers", function()
  it("read both SFT forms, skip blank lines, tolerate a BOM and CRLF, keep line numbers", function()
    local list = collect(data.sft(FIX .. "sft.jsonl"))
    assert.are.equal(3, #list)
    local a, b, c = list[1], list[2], list[3]
    assert.are.equal("What is 2+2?", a.prompt)          -- BOM removed from line 1
    assert.are.equal(" 4", a.completion)                -- CR removed
    assert.are.same({{role = "user", content = "What is 2+2?"}, {role = "assistant", content = " 4"}},
      a.messages)
    assert.are.equal(1, a.line)
    assert.are.equal(7, a.meta.id)
    assert.are.equal("integer", math.type(a.meta.id))   -- lua-cjson's floats made integers
    assert.is_nil(b.prompt)
    assert.are.equal(5, #b.messages)
    assert.are.equal("system", b.messages[1].role)
    assert.are.equal(3, b.line)
    assert.are.equal("Café?", c.prompt)                 -- \u escapes decoded to UTF-8
    assert.are.equal(5, c.line)
  end)

  it("orient preference pairs so chosen is the majority, keeping the original orientation", function()
    local list = data.load(FIX .. "preference.jsonl", "preference")
    assert.are.equal(5, #list)
    local hard, flipped, votes, flipped_votes, tie = list[1], list[2], list[3], list[4], list[5]
    assert.are.equal(1.0, hard.p)
    assert.is_false(hard.soft)
    assert.is_false(hard.flipped)
    assert.is_nil(hard.margin)
    -- p = 0.3 for " fine": the pair is turned round
    assert.are.equal(" good", flipped.chosen)
    assert.are.equal(" fine", flipped.rejected)
    assert.is_true(flipped.flipped)
    assert.is_true(math.abs(flipped.p - 0.7) < 1e-12)
    assert.are.equal(0.3, flipped.p_raw)
    assert.are.equal(-0.5, flipped.margin)              -- orientation-relative: negated
    assert.are.equal(2, flipped.line)
    assert.are.equal(0.7, votes.p)
    assert.are.same({7, 3}, votes.votes)
    assert.are.equal("integer", math.type(votes.votes[1]))
    assert.are.equal(4, votes.line)                     -- the blank line 3 is counted
    assert.are.equal(" nice", flipped_votes.chosen)
    assert.are.same({3, 1}, flipped_votes.votes)
    assert.are.same({1, 3}, flipped_votes.votes_raw)
    assert.are.equal(0.75, flipped_votes.p)
    assert.are.equal("test", flipped_votes.meta.source)
    assert.are.equal(0.5, tie.p)
    assert.is_false(tie.flipped)
    for _, ex in ipairs(list) do assert.is_true(ex.p >= 0.5 and ex.p <= 1) end
  end)

  it("read prompts", function()
    local list = collect(data.prompts(FIX .. "prompts.jsonl"))
    assert.are.equal(2, #list)
    assert.are.equal("Our dinner was", list[2].prompt)
    assert.are.equal(3, list[2].line)
    assert.are.equal(2, list[2].meta.template)
  end)

  it("close the file when a loop breaks early, and can be re-read", function()
    for _ = 1, 3 do
      for ex in data.sft(FIX .. "sft.jsonl") do
        assert.are.equal(1, ex.line)
        break
      end
    end
    assert.are.equal(3, #data.load(FIX .. "sft.jsonl", "sft"))
  end)

  it("name the file when it cannot be opened", function()
    fails_with("sft: cannot open tests/fixtures/data/missing.jsonl",
      function() return data.sft(FIX .. "missing.jsonl") end)
  end)

  -- Each malformed line is line 3 of its file (after a good line and a blank one).
  local good = {
    sft = '{"prompt": "Q?", "completion": "A."}',
    preference = '{"prompt": "P", "chosen": " a", "rejected": " b"}',
    prompts = '{"prompt": "P"}',
  }
  local cases = {
    {"sft", "{\"prompt\": \"Q?\", \"completion\": ", "invalid JSON: "},
    {"sft", "[1, 2]", "expected a JSON object, got array"},
    {"sft", "\"text\"", "expected a JSON object, got string"},
    {"sft", "{\"prompt\": \"Q?\"}", "sft: missing field \"completion\""},
    {"sft", "{\"completion\": \"A\"}", "sft: missing field \"prompt\""},
    {"sft", "{\"text\": \"A\"}", "sft: missing field \"messages\", or \"prompt\" and \"completion\""},
    {"sft", "{\"prompt\": 3, \"completion\": \"A\"}", "sft: field \"prompt\" must be a string, got number"},
    {"sft", "{\"prompt\": \"Q\", \"completion\": null}", "sft: field \"completion\" must be a string, got null"},
    {"sft", "{\"prompt\": \"\", \"completion\": \"A\"}", "sft: field \"prompt\" is empty"},
    {"sft", "{\"prompt\": \"Q\", \"completion\": \"  \\n\"}", "sft: field \"completion\" is empty"},
    {"sft", "{\"prompt\": \"Q\xff\", \"completion\": \"A\"}", "sft: field \"prompt\" is not valid UTF-8"},
    {"sft", "{\"messages\": \"hi\"}", "sft: field \"messages\" must be an array, got string"},
    {"sft", "{\"messages\": {\"role\": \"user\"}}", "sft: field \"messages\" must be an array, got object"},
    {"sft", "{\"messages\": []}", "sft: field \"messages\" is empty"},
    {"sft", "{\"messages\": [\"hi\"]}", "sft: messages[1] must be an object, got string"},
    {"sft", "{\"messages\": [{\"content\": \"hi\"}]}", "sft: messages[1]: missing field \"role\""},
    {"sft", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"bot\", \"content\": \"x\"}]}",
      "sft: messages[2]: unknown role \"bot\" (expected system, user or assistant)"},
    {"sft", "{\"messages\": [{\"role\": 1, \"content\": \"hi\"}]}",
      "sft: messages[1]: field \"role\" must be a string, got number"},
    {"sft", "{\"messages\": [{\"role\": \"assistant\"}]}", "sft: messages[1]: missing field \"content\""},
    {"sft", "{\"messages\": [{\"role\": \"assistant\", \"content\": [\"x\"]}]}",
      "sft: messages[1]: field \"content\" must be a string, got array"},
    {"sft", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"\"}]}",
      "sft: messages[2]: field \"content\" is empty"},
    {"sft", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
      "sft: \"messages\" has no assistant turn to learn from"},
    {"sft", "{\"messages\": [{\"role\": \"assistant\", \"content\": \"hi\"}], \"prompt\": \"x\"}",
      "sft: give either \"messages\" or \"prompt\"/\"completion\", not both"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\"", "invalid JSON: "},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\"}", "preference: missing field \"rejected\""},
    {"preference", "{\"prompt\": \"P\", \"rejected\": \" a\"}", "preference: missing field \"chosen\""},
    {"preference", "{\"chosen\": \"a\", \"rejected\": \" b\"}", "preference: missing field \"prompt\""},
    {"preference", "{\"prompt\": \"P\", \"chosen\": true, \"rejected\": \" b\"}",
      "preference: field \"chosen\" must be a string, got boolean"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \"\"}", "preference: field \"rejected\" is empty"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"p\": 1.5}",
      "preference: field \"p\" must be in [0, 1], got 1.5"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"p\": -0.1}",
      "preference: field \"p\" must be in [0, 1], got -0.1"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"p\": \"0.7\"}",
      "preference: field \"p\" must be a number in [0, 1], got string"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"p\": NaN}", "invalid JSON: "},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"p\": 0.5, \"votes\": [1, 1]}",
      "preference: give either \"p\" or \"votes\", not both"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"votes\": [3]}",
      "preference: field \"votes\" must have 2 entries [n_chosen, n_rejected], got 1"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"votes\": [1, 2, 3]}",
      "preference: field \"votes\" must have 2 entries [n_chosen, n_rejected], got 3"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"votes\": [2, -1]}",
      "preference: field \"votes\": entry 2 must be a non-negative integer, got -1"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"votes\": [1.5, 1]}",
      "preference: field \"votes\": entry 1 must be a non-negative integer, got 1.5"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"votes\": [\"3\", 1]}",
      "preference: field \"votes\": entry 1 must be a non-negative integer, got \"3\""},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"votes\": [0, 0]}",
      "preference: field \"votes\" is [0, 0]: no votes to make a label from"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"votes\": {\"a\": 1}}",
      "preference: field \"votes\" must be an array [n_chosen, n_rejected], got object"},
    {"preference", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"margin\": \"big\"}",
      "preference: field \"margin\" must be a finite number, got \"big\""},
    {"prompts", "{\"text\": \"P\"}", "prompts: missing field \"prompt\""},
    {"prompts", "{\"prompt\": [\"P\"]}", "prompts: field \"prompt\" must be a string, got array"},
    {"prompts", "{\"prompt\": \" \"}", "prompts: field \"prompt\" is empty"},
    {"prompts", "nul", "invalid JSON: "},
  }
  for i, case in ipairs(cases) do
    local kind, line, message = case[1], case[2], case[3]
    it(string.format("reject malformed %s line %d: %s", kind, i, message), function()
      local path = tmpfile(good[kind] .. "\n\n" .. line .. "\n" .. good[kind] .. "\n")
      local reader = ({sft = data.sft, preference = data.preference, prompts = data.prompts})[kind]
      local seen = 0
      local err = fails_with(path .. ":3: " .. message, function()
        for _ in reader(path) do seen = seen + 1 end
      end)
      assert.are.equal(1, seen)                     -- the good line before it was delivered
      assert.is_nil(err:find("stack traceback", 1, true))
      os.remove(path)
    end)
  end

  it("parse_line validates one line without a file", function()
    local ex = data.parse_line("preference", '{"prompt": "P", "chosen": " a", "rejected": " b", "votes": [1, 4]}')
    assert.are.equal(" b", ex.chosen)
    assert.are.equal(0.8, ex.p)
    local none, msg = data.parse_line("prompts", '{"prompt": 1}')
    assert.is_nil(none)
    assert.are.equal('prompts: field "prompt" must be a string, got number', msg)
  end)

  it("split_by_prompt holds out whole prompts, the same ones whatever the order", function()
    local list = data.load(data.path("qa/train.jsonl"), "sft")
    local train, held = data.split_by_prompt(list, 0.1)
    assert.are.equal(#list, #train + #held)
    -- 3263 examples: a tenth is 326, with a standard deviation of about 17 for a fair digest
    assert.is_true(#held > 260 and #held < 400, "held out " .. #held)
    local in_train = {}
    for _, ex in ipairs(train) do in_train[ex.prompt] = true end
    for _, ex in ipairs(held) do assert.is_nil(in_train[ex.prompt], ex.prompt) end
    -- reversed lines give the same held-out examples
    local reversed = {}
    for i = #list, 1, -1 do reversed[#reversed + 1] = list[i] end
    local _, held2 = data.split_by_prompt(reversed, 0.1)
    local lines = {}
    for _, ex in ipairs(held) do lines[ex.line] = true end
    assert.are.equal(#held, #held2)
    for _, ex in ipairs(held2) do assert.is_true(lines[ex.line]) end
    -- pairs that share a prompt stay together; conversations split by the turns before the answer
    local pairs_ = {}
    for i = 1, 60 do
      pairs_[i] = {prompt_messages = {{role = "user", content = "q" .. (i % 20)}}, prompt = "q" .. (i % 20), line = i}
    end
    local t2, h2 = data.split_by_prompt(pairs_, 0.5)
    local side = {}
    for _, ex in ipairs(t2) do side[ex.prompt] = "train" end
    for _, ex in ipairs(h2) do assert.is_nil(side[ex.prompt]) end
    assert.are.equal(0, #h2 % 3)
    assert.has_error(function() data.split_by_prompt(list, 1.5) end,
      "split_by_prompt: fraction must be a number in [0, 1] (got 1.5)")
  end)

  it("split_by_prompt with a key function keeps examples of one key together", function()
    -- the arithmetic problems of one operand pair (a + b, b + a, a - b) share a key
    local list = data.load(data.path("arith/train.jsonl"), "sft")
    local function pair(ex)
      local a, b = ex.prompt:match("^What is (%d+) [+-] (%d+)%?$")
      a, b = tonumber(a), tonumber(b)
      return math.min(a, b) .. "," .. math.max(a, b)
    end
    local train, held = data.split_by_prompt(list, 0.2, pair)
    assert.are.equal(#list, #train + #held)
    local side = {}
    for _, ex in ipairs(train) do side[pair(ex)] = "train" end
    local held_pairs = 0
    for _, ex in ipairs(held) do
      assert.are_not.equal("train", side[pair(ex)], ex.prompt)
      if side[pair(ex)] == nil then side[pair(ex)] = "held"; held_pairs = held_pairs + 1 end
    end
    -- 330 pairs: a fifth is 66, with a standard deviation of about 7 for a fair digest
    assert.is_true(held_pairs > 45 and held_pairs < 90, "held out pairs " .. held_pairs)
    -- keyed by prompt, the same problems split otherwise: the key is what decides
    local _, by_prompt = data.split_by_prompt(list, 0.2)
    local same = #by_prompt == #held
    for i = 1, math.min(#held, #by_prompt) do same = same and held[i].line == by_prompt[i].line end
    assert.is_false(same)
    assert.has_error(function() data.split_by_prompt(list, 0.2, function() return 1 end) end,
      "split_by_prompt: the key of example 1 is a number, not a string")
  end)
end)

----------------------------------------------------------------------------

describe("SFT batches", function()
  local tok = byte_tok()
  local examples = {
    {prompt = "Hi", completion = "yo"},
    {prompt = "Q?", completion = "A"},
  }

  it("mask the prompt, shift the targets, pad on the right with pad_id", function()
    local enc = {}
    for i, ex in ipairs(examples) do enc[i] = data.encode_sft(tok, ex) end
    local b = data.collate_sft(tok, enc)
    local ids1 = cat(bytes("Hi"), bytes("yo"), EOS)        -- 5 tokens
    local ids2 = cat(bytes("Q?"), bytes("A"), EOS)         -- 4 tokens
    assert.are.same({2, 5}, b.ids:shape())
    assert.are.equal("int64", b.ids:dtype())
    assert.are.equal("int64", b.targets:dtype())
    assert.are.equal("int64", b.labels:dtype())
    assert.are.equal("float32", b.attention_mask:dtype())
    assert.are.equal("float32", b.loss_mask:dtype())
    assert.are.same({ids1, cat(ids2, PAD)}, b.ids:totable())
    assert.are.same({{1, 1, 1, 1, 1}, {1, 1, 1, 1, 0}}, b.attention_mask:totable())
    -- labels: HF convention, unshifted, -100 off the completion
    assert.are.same({{-100, -100, 121, 111, EOS}, {-100, -100, 65, EOS, -100}}, b.labels:totable())
    -- targets: what each position predicts; the last prompt token predicts the first answer token
    assert.are.same({{-100, 121, 111, EOS, -100}, {-100, 65, EOS, -100, -100}}, b.targets:totable())
    assert.are.same({{0, 1, 1, 1, 0}, {0, 1, 1, 0, 0}}, b.loss_mask:totable())
    assert.are.same({{0, 1, 2, 3, 4}, {0, 1, 2, 3, 0}}, b.position_ids:totable())
    assert.are.equal(5, b.n_loss_tokens)
    assert.are.same({5, 4}, b.lengths)
  end)

  it("pad with eos_id when there is no pad_id, and with 0 when there is neither", function()
    local t1 = byte_tok({no_pad = true})
    local b = data.collate_sft(t1, {data.encode_sft(t1, examples[1]), data.encode_sft(t1, examples[2])})
    assert.are.equal(EOS, b.ids:totable()[2][5])
    local t2 = byte_tok({no_pad = true, no_eos = true})
    local b2 = data.collate_sft(t2, {data.encode_sft(t2, examples[1]), data.encode_sft(t2, examples[2])})
    assert.are.same({cat(bytes("Hiyo")), cat(bytes("Q?A"), 0)}, b2.ids:totable())  -- no EOS appended
    assert.are.same({{-100, 121, 111, -100}, {-100, 65, -100, -100}}, b2.targets:totable())
  end)

  it("add BOS only when asked, and format prompt/completion when asked", function()
    local enc = data.encode_sft(tok, examples[2], {prompt_format = "Q: %s\nA:", completion_format = " %s"})
    local b = data.collate_sft(tok, {enc}, {add_bos = true})
    assert.are.same({cat(BOS, bytes("Q: Q?\nA:"), bytes(" A"), EOS)}, b.ids:totable())
    assert.are.equal(3, b.n_loss_tokens)                   -- " ", "A", EOS
  end)

  it("train only on assistant tokens (and their end tokens) of a conversation", function()
    local ex = data.parse_line("sft", [[{"messages": [{"role": "system", "content": "S"},
      {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
      {"role": "user", "content": "u2"}, {"role": "assistant", "content": "b"}]}]])
    local b = data.collate_sft(tok, {data.encode_sft(tok, ex)})
    local ids = cat(SYSTEM, bytes("S"), END, USER, bytes("u1"), END, ASSISTANT, bytes("a1"), END,
                    USER, bytes("u2"), END, ASSISTANT, bytes("b"), END)
    assert.are.same({ids}, b.ids:totable())
    local labels = b.labels:totable()[1]
    local expected = rep(-100, #ids)
    expected[9], expected[10], expected[11] = 97, 49, END         -- "a1" <|end|>
    expected[17], expected[18] = 98, END                          -- "b" <|end|>
    assert.are.same(expected, labels)
    assert.are.equal(5, b.n_loss_tokens)
    -- prompt/completion through the chat template with chat = true
    local b2 = data.collate_sft(tok, {data.encode_sft(tok, examples[1], {chat = true})})
    assert.are.same({cat(USER, bytes("Hi"), END, ASSISTANT, bytes("yo"), END)}, b2.ids:totable())
    assert.are.same({{-100, -100, -100, -100, -100, 121, 111, END}}, b2.labels:totable())
  end)

  it("refuse messages without a chat template", function()
    local plain = {encode = ByteTok.encode, eos_id = EOS}
    fails_with("messages examples need a tokenizer with apply_chat_template", function()
      data.encode_sft(plain, {messages = {{role = "assistant", content = "x"}}})
    end)
  end)
end)

describe("truncation", function()
  local tok = byte_tok()
  local function seq(prompt, completion, opts)
    local enc = data.encode_sft(tok, {prompt = prompt, completion = completion}, opts)
    local b = data.collate_sft(tok, {enc}, opts)
    return tok:decode(b.ids:totable()[1]), b.ids:totable()[1], b
  end

  it("cap a long completion at max_completion_len, keeping its start and dropping EOS", function()
    local text, ids, b = seq("P:", "abcdefgh", {max_completion_len = 4})
    assert.are.equal("P:abcd", text)
    assert.are.equal(100, ids[#ids])                       -- "d", no EOS
    assert.are.equal(1, b.truncated)
    local _, ids2 = seq("P:", "abc", {max_completion_len = 4})
    assert.are.equal(EOS, ids2[#ids2])                     -- "abc" + EOS fits exactly
  end)

  it("keep the end of a prompt longer than max_prompt_len", function()
    assert.are.equal("6789:ok", seq("0123456789:", "ok", {max_prompt_len = 5}))
  end)

  it("fit max_len by cutting the prompt from the left, down to min_prompt_len, then the completion", function()
    -- 10 + 3 + EOS = 14 > 8: the prompt gives up its first 6 tokens
    local text, ids = seq("0123456789", "abc", {max_len = 8})
    assert.are.equal("6789abc", text)
    assert.are.equal(8, #ids)
    assert.are.equal(EOS, ids[8])
    -- a long completion: the prompt keeps max_len // 2 tokens, the completion is cut
    text, ids = seq("0123456789", "abcdefghij", {max_len = 8})
    assert.are.equal("6789abcd", text)
    assert.are.equal(8, #ids)
    -- min_prompt_len chosen by the caller
    assert.are.equal("89abcdef", (seq("0123456789", "abcdefghij", {max_len = 8, min_prompt_len = 2})))
    -- nothing to do when it fits
    assert.are.equal("01ab", (seq("01", "ab", {max_len = 8})):sub(1, 4))
  end)

  it("truncate a conversation by the same rule (prompt = everything before the first assistant token)", function()
    local ex = {messages = {{role = "user", content = "0123456789"}, {role = "assistant", content = "ab"}}}
    local b = data.collate_sft(tok, {data.encode_sft(tok, ex)}, {max_len = 8})
    local ids = b.ids:totable()[1]
    assert.are.same(cat(bytes("789"), END, ASSISTANT, bytes("ab"), END), ids)
    assert.are.same(cat(rep(-100, 5), 97, 98, END), b.labels:totable()[1])
  end)

  it("pad to max_len or to a multiple when asked", function()
    local _, ids = seq("P", "a", {max_len = 8, pad_to_max_len = true})
    assert.are.equal(8, #ids)
    local _, ids2 = seq("P", "a", {pad_to_multiple_of = 4})
    assert.are.equal(4, #ids2)
  end)
end)

describe("packing", function()
  local tok = byte_tok()
  local list = {
    {prompt = "ab", completion = "c"},      -- 4 tokens with EOS
    {prompt = "d", completion = "ef"},      -- 4
    {prompt = "ghi", completion = "jk"},    -- 6
    {prompt = "l", completion = "m"},       -- 3
  }

  it("pack short examples into rows with segment ids and restarting positions", function()
    local loader = data.sft_loader(list, tok, {pack = true, max_len = 8, batch_size = 4, shuffle = false})
    local batches = {}
    for b in loader:epoch(1) do batches[#batches + 1] = b end
    assert.are.equal(1, #batches)
    local b = batches[1]
    assert.are.same({3, 8}, b.ids:shape())                      -- rows: [1,2] [3] [4]
    assert.are.same({2, 1, 1}, b.segments_per_row)
    local ids = b.ids:totable()
    assert.are.same(cat(bytes("abc"), EOS, bytes("def"), EOS), ids[1])
    assert.are.same(cat(bytes("ghijk"), EOS, PAD, PAD), ids[2])
    assert.are.same({1, 1, 1, 1, 2, 2, 2, 2}, b.segment_ids:totable()[1])
    assert.are.same({1, 1, 1, 1, 1, 1, 0, 0}, b.segment_ids:totable()[2])
    assert.are.same({0, 1, 2, 3, 0, 1, 2, 3}, b.position_ids:totable()[1])
    assert.are.same({0, 1, 2, 3, 4, 5, 0, 0}, b.position_ids:totable()[2])
    assert.are.same({1, 1, 1, 1, 1, 1, 0, 0}, b.attention_mask:totable()[2])
    -- targets stay inside a segment: EOS of segment 1 does not predict "d"
    assert.are.same({-100, 99, EOS, -100, 101, 102, EOS, -100}, b.targets:totable()[1])
    assert.are.same({-100, -100, 106, 107, EOS, -100, -100, -100}, b.targets:totable()[2])
    assert.are.equal(2 + 3 + 3 + 2, b.n_loss_tokens)          -- completion tokens and EOS
  end)

  it("build a block-diagonal causal mask from segment ids", function()
    local seg = la.tensor({{1, 1, 2, 2, 0}})
    local m = data.packed_attention_mask(seg)
    assert.are.equal("bool", m:dtype())
    assert.are.same({{
      {true, false, false, false, false},
      {true, true, false, false, false},
      {false, false, true, false, false},
      {false, false, true, true, false},
      {false, false, false, false, true},
    }}, m:totable())
  end)

  it("keep every example exactly once per shuffled epoch", function()
    local many = {}
    for i = 1, 30 do many[i] = {prompt = "p" .. i, completion = string.rep("x", i % 5 + 1)} end
    local loader = data.sft_loader(many, tok, {pack = true, max_len = 16, batch_size = 2, seed = 3})
    local n_segments, n_tokens = 0, 0
    for b in loader:epoch(2) do
      for _, c in ipairs(b.segments_per_row) do n_segments = n_segments + c end
      n_tokens = n_tokens + b.attention_mask:sum():item()
      assert.is_true(b.ids:size(2) == 16)
    end
    assert.are.equal(30, n_segments)
    local expected = 0
    for _, ex in ipairs(many) do expected = expected + #ex.prompt + #ex.completion + 1 end
    assert.are.equal(expected, n_tokens)
  end)

  it("needs max_len", function()
    fails_with("pack = true needs max_len", function() data.sft_loader(list, tok, {pack = true}) end)
  end)
end)

describe("preference batches", function()
  local tok = byte_tok()
  local exs = {
    data.parse_line("preference", '{"prompt": "P:", "chosen": "ab", "rejected": "c", "p": 0.25, "margin": 1}'),
    data.parse_line("preference", '{"prompt": "Q", "chosen": "d", "rejected": "efg"}'),
  }

  it("pad chosen and rejected to one length, with masks, p and margin", function()
    local loader = data.preference_loader(exs, tok, {batch_size = 2, shuffle = false})
    local b = loader:epoch(1)()
    -- example 1 was flipped: chosen is "c" (p = 0.75)
    assert.are.same({2, 5}, b.chosen.ids:shape())
    assert.are.same({2, 5}, b.rejected.ids:shape())
    assert.are.same({cat(bytes("P:c"), EOS, PAD), cat(bytes("Qd"), EOS, PAD, PAD)}, b.chosen.ids:totable())
    assert.are.same({cat(bytes("P:ab"), EOS), cat(bytes("Qefg"), EOS)}, b.rejected.ids:totable())
    assert.are.same({{1, 1, 1, 1, 0}, {1, 1, 1, 0, 0}}, b.chosen.attention_mask:totable())
    assert.are.same({{0, 0, 1, 1, 0}, {0, 1, 1, 0, 0}}, b.chosen.completion_mask:totable())
    assert.are.same({{0, 0, 1, 1, 1}, {0, 1, 1, 1, 1}}, b.rejected.completion_mask:totable())
    assert.are.same({{-100, 99, EOS, -100, -100}, {100, EOS, -100, -100, -100}}, b.chosen.targets:totable())
    assert.are.same({{0, 1, 1, 0, 0}, {1, 1, 0, 0, 0}}, b.chosen.loss_mask:totable())
    assert.are.equal("float32", b.p:dtype())
    assert.are.same({0.75, 1}, b.p:totable())
    assert.are.same({-1, 0}, b.margin:totable())
    assert.are.same({true, false}, b.flipped)
    assert.are.same({2, 1}, b.prompt_lengths)
    assert.are.equal(exs[1], b.examples[1])
  end)

  it("truncate both sides with the same prompt", function()
    local ex = data.parse_line("preference", '{"prompt": "0123456789", "chosen": "abc", "rejected": "abcdefghij"}')
    local b = data.collate_preference(tok, {data.encode_preference(tok, ex)}, {max_len = 8, max_completion_len = 6})
    -- rejected is capped at 6 tokens, the prompt keeps max_len // 2 = 4, and
    -- rejected is then cut to the 4 tokens left
    assert.are.same(cat(bytes("6789abc"), EOS), b.chosen.ids:totable()[1])
    assert.are.same(bytes("6789abcd"), b.rejected.ids:totable()[1])
    assert.are.same({8, 8}, {b.chosen.ids:size(2), b.rejected.ids:size(2)})
    assert.are.equal(1, b.truncated)
  end)
end)

describe("prompt batches", function()
  local tok = byte_tok()
  local exs = {{prompt = "Hello"}, {prompt = "Hi"}, {prompt = "0123456789"}}

  it("pad on the left, with position ids from each prompt's first token", function()
    local b = data.prompt_loader(exs, tok, {batch_size = 3, shuffle = false, max_prompt_len = 6}):epoch(1)()
    assert.are.same({3, 6}, b.ids:shape())
    assert.are.same({cat(PAD, bytes("Hello")), cat(PAD, PAD, PAD, PAD, bytes("Hi")), bytes("456789")},
      b.ids:totable())
    assert.are.same({{0, 1, 1, 1, 1, 1}, {0, 0, 0, 0, 1, 1}, {1, 1, 1, 1, 1, 1}}, b.attention_mask:totable())
    assert.are.same({{0, 0, 1, 2, 3, 4}, {0, 0, 0, 0, 0, 1}, {0, 1, 2, 3, 4, 5}}, b.position_ids:totable())
    assert.are.same({5, 2, 6}, b.lengths)
    assert.are.same({"Hello", "Hi", "0123456789"}, b.prompts)
    assert.are.equal(1, b.truncated)
  end)

  it("use the chat template's generation prompt with chat = true", function()
    local b = data.collate_prompts(tok, {data.encode_prompt(tok, exs[2], {chat = true})})
    assert.are.same({cat(USER, bytes("Hi"), END, ASSISTANT)}, b.ids:totable())
  end)
end)

describe("loaders", function()
  local tok = byte_tok()
  local list = {}
  for i = 1, 10 do list[i] = {prompt = "p" .. i} end

  local function order(loader, epoch)
    local out = {}
    for b in loader:epoch(epoch) do
      for _, p in ipairs(b.prompts) do out[#out + 1] = p end
    end
    return out
  end

  it("shuffle deterministically from (seed, epoch), independently of la.manual_seed", function()
    local a = data.prompt_loader(list, tok, {batch_size = 3, seed = 5})
    la.manual_seed(1)
    local r1 = la.rand(4):totable()
    local e1 = order(a, 1)
    local r2 = la.rand(4):totable()
    la.manual_seed(999)
    assert.are.same(e1, order(data.prompt_loader(list, tok, {batch_size = 3, seed = 5}), 1))
    la.manual_seed(1)
    assert.are.same(r1, la.rand(4):totable())
    assert.are.same(r2, la.rand(4):totable())          -- the loader drew nothing from la's stream
    assert.are_not.same(e1, order(a, 2))
    assert.are_not.same(e1, order(data.prompt_loader(list, tok, {batch_size = 3, seed = 6}), 1))
    local sorted = {}
    for i, p in ipairs(e1) do sorted[i] = p end
    table.sort(sorted)
    local expected = {}
    for i = 1, 10 do expected[i] = "p" .. i end
    table.sort(expected)
    assert.are.same(expected, sorted)
  end)

  it("give a fixed permutation for a seed (the same on every platform)", function()
    assert.are.same({5, 4, 2, 3, 1}, data.permutation(5, 0, 1))
    local r = data.rng(42)
    local x = r:float()
    assert.is_true(x >= 0 and x < 1)
    assert.are.equal(x, data.rng(42):float())
  end)

  it("keep the file order without shuffle, and drop the last short batch when asked", function()
    local l = data.prompt_loader(list, tok, {batch_size = 4, shuffle = false})
    assert.are.same({"p1", "p2", "p3", "p4"}, l:epoch(1)().prompts)
    assert.are.equal(3, l:num_batches())
    local d = data.prompt_loader(list, tok, {batch_size = 4, drop_last = true})
    assert.are.equal(2, d:num_batches())
    local n = 0
    for b, epoch in d:forever() do
      n = n + 1
      assert.are.equal(4, #b.prompts)
      if n == 5 then assert.are.equal(3, epoch); break end
    end
  end)

  it("read a JSONL path directly", function()
    local l = data.preference_loader(FIX .. "preference.jsonl", tok, {batch_size = 5, shuffle = false})
    local b = l:epoch(1)()
    assert.are.same({5}, b.p:shape())
    assert.are.equal(" good", b.examples[2].chosen)
  end)

  it("cut a token stream into language-model blocks", function()
    local l = data.lm_loader("abcdefghijk", tok, {block_size = 4, batch_size = 8, shuffle = false})
    local b = l:epoch(1)()
    assert.are.same({bytes("abcd"), bytes("efgh")}, b.ids:totable())
    assert.are.same({bytes("bcde"), bytes("fghi")}, b.targets:totable())
    fails_with("too few", function() data.lm_loader("abc", tok, {block_size = 4}) end)
  end)

  it("count the examples the length limits cut, for every kind of data", function()
    local long = {prompt = string.rep("p", 30), completion = string.rep("c", 30)}
    local short = {prompt = "p", completion = "c"}
    local sft = data.sft_loader({long, short, long}, tok, {max_len = 40})
    assert.are.same({2, "max_len 40"}, {sft.truncated, sft.limits})
    local packed = data.sft_loader({long, short, long}, tok, {max_len = 40, pack = true})
    assert.are.equal(2, packed.truncated)
    local packed_cut = 0
    for b in packed:epoch(1) do packed_cut = packed_cut + b.truncated end
    assert.are.equal(2, packed_cut)
    assert.are.same({0, nil}, {data.sft_loader({long}, tok).truncated, data.sft_loader({long}, tok).limits})
    local pairs_ = {{prompt = "p", chosen = string.rep("a", 50), rejected = "b", p = 1.0},
                    {prompt = "p", chosen = "a", rejected = "b", p = 1.0}}
    local pref = data.preference_loader(pairs_, tok, {max_len = 20, max_completion_len = 30})
    assert.are.same({1, "max_len 20, max_completion_len 30"}, {pref.truncated, pref.limits})
    local prompts = data.prompt_loader({{prompt = string.rep("x", 9)}, {prompt = "x"}}, tok, {max_prompt_len = 8})
    assert.are.same({1, "max_prompt_len 8"}, {prompts.truncated, prompts.limits})
    -- the count is the number of examples a batch reports cut, summed over an epoch
    local cut = 0
    for b in sft:epoch(1) do cut = cut + b.truncated end
    assert.are.equal(sft.truncated, cut)
  end)

  it("report once per file the fields a format ignores", function()
    local notes = {}
    data.on_ignored_fields(function(note) notes[#notes + 1] = note end)
    local path = tmpfile('{"prompt": "a", "chosen": "b", "rejected": "c", "label": 0.7, "source": "x"}\n'
      .. '{"prompt": "a", "chosen": "b", "rejected": "c", "p": 0.7}\n'
      .. '{"prompt": "a", "chosen": "b", "rejected": "c", "label": 0.2}\n')
    local list = data.load(path, "preference")
    assert.are.equal(1.0, list[1].p)                    -- "label" is no soft label: the pair trains as hard
    assert.are.equal(1, #notes)
    assert.are.same({label = 2, source = 1}, notes[1].fields)
    assert.are.equal(path .. ': fields the preference format does not use, ignored: "label" (2 of 3 lines), '
      .. '"source" (1 of 3 lines)', notes[1].text)
    for _ in data.sft(FIX .. "sft.jsonl") do break end  -- a loop left early reports what it read
    assert.are.equal(2, #notes)
    assert.are.same({id = 1}, notes[2].fields)
    local plain = tmpfile('{"prompt": "a"}\n{"prompt": "b"}\n')
    data.load(plain, "prompts")                         -- lines with only the format's fields: nothing to say
    os.remove(plain)
    assert.are.equal(2, #notes)
    data.on_ignored_fields(nil)
    data.load(path, "preference")
    assert.are.equal(2, #notes)
    os.remove(path)
  end)

  it("reject bad arguments", function()
    fails_with("batch_size must be a positive integer", function()
      data.prompt_loader(list, tok, {batch_size = 0})
    end)
    fails_with("expected a tokenizer", function() data.sft_loader({}, nil) end)
  end)
end)

----------------------------------------------------------------------------

describe("bundled data", function()
  it("is found from the checkout, and a missing file names the places searched", function()
    local root = assert(data.root())
    assert.is_truthy(data.path("README.md"):find("README.md", 1, true))
    assert.are.equal(root .. "/sentiment/train.jsonl", data.path("sentiment/train.jsonl"))
    fails_with("data.path: nope.jsonl not found in", function() data.path("nope.jsonl") end)
  end)

  it("is installed next to the modules by `make install` and found there", function()
    local dir = os.tmpname()
    os.remove(dir)
    local q = "'" .. dir .. "'"
    assert.is_true(os.execute("make -s install INST_LIBDIR=" .. q .. "/lib INST_LUADIR=" .. q .. "/lua"
      .. " INST_BINDIR=" .. q .. "/bin >/dev/null 2>&1"))
    local cmd = "cd / && LUA_PATH=" .. q .. "'/lua/?.lua;" .. "'" .. q .. "'/lua/?/init.lua;;' LUA_CPATH=" .. q
      .. "'/lib/?.so;;' LUALIGN_DATA= lua5.4 -e 'io.write(require(\"lualign\").data.path(\"vader/judge.tsv\"))'"
    local p = io.popen(cmd)
    local out = p:read("a")
    p:close()
    assert.are.equal(dir .. "/lua/lualign/datasets/vader/judge.tsv", out)
    local f = io.open(dir .. "/lua/lualign/datasets/build.lua")
    assert.is_nil(f)                                   -- the build script stays in the checkout
    os.execute("rm -rf " .. q)
  end)

  local function count(iter)
    local n = 0
    for _ in iter do n = n + 1 end
    return n
  end

  it("parses cleanly in every file, with the documented sizes", function()
    local sizes = {
      ["qa/train.jsonl"] = {data.sft, 3200, 3400}, ["qa/validation.jsonl"] = {data.sft, 380, 440},
      ["qa/test.jsonl"] = {data.sft, 380, 440},
      ["sentiment/train.jsonl"] = {data.preference, 1150, 1250},
      ["sentiment/validation.jsonl"] = {data.preference, 140, 160},
      ["sentiment/test.jsonl"] = {data.preference, 140, 160},
      ["sentiment/prompts_train.jsonl"] = {data.prompts, 800, 1400},
      ["sentiment/prompts_test.jsonl"] = {data.prompts, 100, 200},
      ["vader/modest/train.jsonl"] = {data.preference, 2000, 2000},
      ["vader/modest/validation.jsonl"] = {data.preference, 200, 200},
      ["vader/confident/train.jsonl"] = {data.preference, 2000, 2000},
      ["vader/confident/validation.jsonl"] = {data.preference, 200, 200},
      ["vader/test.jsonl"] = {data.preference, 400, 400},
      ["vader/prompts_train.jsonl"] = {data.prompts, 12, 12},
      ["vader/prompts_test.jsonl"] = {data.prompts, 4, 4},
    }
    for rel, s in pairs(sizes) do
      local n = count(s[1](data.path(rel)))
      assert(n >= s[2] and n <= s[3], rel .. ": " .. n .. " examples")
    end
    local text = data.read_text(data.path("austen/train.txt"))
    assert.is_true(#text > 1000000 and #text < 2000000)
    assert.is_truthy(text:find("It is a truth universally acknowledged", 1, true))
  end)

  it("keeps its held-out splits apart from the training ones", function()
    local function set_of(rel, kind, fields)
      local s = {}
      for ex in data[kind](data.path(rel)) do
        for _, f in ipairs(fields) do s[ex[f]] = true end
      end
      return s
    end
    local function shared(a, b)
      local n = 0
      for k in pairs(a) do if b[k] then n = n + 1 end end
      return n
    end
    local pairs_fields = {"chosen", "rejected"}
    assert.are.equal(0, shared(set_of("sentiment/prompts_train.jsonl", "prompts", {"prompt"}),
                               set_of("sentiment/prompts_test.jsonl", "prompts", {"prompt"})))
    assert.are.equal(0, shared(set_of("sentiment/train.jsonl", "preference", pairs_fields),
                               set_of("sentiment/test.jsonl", "preference", pairs_fields)))
    assert.are.equal(0, shared(set_of("vader/prompts_train.jsonl", "prompts", {"prompt"}),
                               set_of("vader/prompts_test.jsonl", "prompts", {"prompt"})))
    local test_words = set_of("vader/test.jsonl", "preference", pairs_fields)
    for _, rel in ipairs({"vader/modest/train.jsonl", "vader/confident/train.jsonl"}) do
      assert.are.equal(0, shared(set_of(rel, "preference", pairs_fields), test_words), rel)
    end
    assert.are.equal(0, shared(set_of("qa/train.jsonl", "sft", {"prompt"}), set_of("qa/test.jsonl", "sft", {"prompt"})))
  end)

  it("has modest labels in the majority in one VADER variant and confident ones in the other", function()
    local function shares(rel)
      local n, modest, confident = 0, 0, 0
      for ex in data.preference(data.path(rel)) do
        n = n + 1
        assert.is_false(ex.flipped)                  -- written already oriented
        if ex.p >= 0.55 and ex.p <= 0.75 then modest = modest + 1 end
        if ex.p > 0.75 then confident = confident + 1 end
      end
      return modest / n, confident / n
    end
    local m1, c1 = shares("vader/modest/train.jsonl")
    local m2, c2 = shares("vader/confident/train.jsonl")
    assert.is_true(m1 > 0.6 and c1 < 0.3)
    assert.is_true(c2 > 0.6 and m2 < 0.3)
  end)

  it("has a judge that scores text with held-out ratings", function()
    local judge = data.judge()
    assert.is_true(judge.size > 7000)
    local good = judge:score("The movie was wonderful.")
    local bad = judge:score("The movie was dreadful.")
    assert.is_true(good > 1 and bad < -1)
    local s, n = judge:score("The movie was.")
    assert.are.equal(0, s)
    assert.are.equal(0, n)
    local p = judge:prob(" wonderful.", " dreadful.")
    assert.is_true(p > 0.9)
    assert.is_true(math.abs(p + judge:prob("dreadful", "wonderful") - 1) < 1e-12)
    assert.is_nil(judge:prob("wonderful", "qwertyuiop"))
    assert.are.equal(1, judge:prefers("a wonderful day", "a dreadful day"))
  end)
end)
