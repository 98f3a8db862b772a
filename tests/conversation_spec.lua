-- Conversational data (lualign.data.conversation): TRL's conversational
-- preference records (explicit and implicit prompt), Anthropic-HH
-- transcripts split at their common prefix, K responses with votes or ranks
-- expanded into soft-labelled pairs, and their encoding through a model's
-- own chat template (the shipped Qwen3 tokenizer); SFT `messages` through it.

local la = require "lualign"
local cjson = require "cjson"

local data = la.data

local function parse(obj)
  local ex, msg = data.parse_line("preference", cjson.encode(obj))
  assert.truthy(ex, msg)
  return ex
end

local function problem(obj)
  local ex, msg = data.parse_line("preference", cjson.encode(obj))
  assert.is_nil(ex)
  return msg
end

local qwen
local function tok()
  qwen = qwen or la.tokenizer.load("tests/fixtures/tokenizers/qwen3")
  return qwen
end

local function write_jsonl(lines)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  for _, l in ipairs(lines) do f:write(cjson.encode(l), "\n") end
  f:close()
  return path
end

describe("TRL conversational preference records", function()
  it("keep the prompt and both responses as messages", function()
    local ex = parse({prompt = {{role = "system", content = "Be kind."}, {role = "user", content = "Hi?"}},
      chosen = {{role = "assistant", content = "Hello!"}}, rejected = {{role = "assistant", content = "Go."}}, p = 0.8})
    assert.are.equal(2, #ex.prompt_messages)
    assert.are.equal("Hello!", ex.chosen_messages[1].content)
    assert.are.equal("Go.", ex.rejected_messages[1].content)
    assert.are.equal(0.8, ex.p)
    assert.is_false(ex.flipped)
  end)

  it("orient a pair whose label prefers the rejected side, messages included", function()
    local ex = parse({prompt = {{role = "user", content = "Hi?"}}, chosen = {{role = "assistant", content = "A"}},
      rejected = {{role = "assistant", content = "B"}}, votes = {1, 3}})
    assert.is_true(ex.flipped)
    assert.are.equal("B", ex.chosen_messages[1].content)
    assert.are.equal(0.75, ex.p)
  end)

  it("take the common first messages as the prompt when there is no \"prompt\"", function()
    local u = {role = "user", content = "Q"}
    local ex = parse({chosen = {u, {role = "assistant", content = "good"}}, rejected = {u, {role = "assistant", content = "bad"}}})
    assert.are.same({u}, ex.prompt_messages)
    assert.are.equal("good", ex.chosen_messages[1].content)
    assert.are.equal(1.0, ex.p)
  end)

  it("refuse what is not a conversation, naming the field", function()
    assert.truthy(problem({prompt = {{role = "user", content = "Q"}}, chosen = {{role = "user", content = "x"}},
      rejected = {{role = "assistant", content = "y"}}}):find("chosen[1]: with a \"prompt\", a response holds assistant messages", 1, true))
    assert.truthy(problem({prompt = {{role = "robot", content = "Q"}}, chosen = {{role = "assistant", content = "x"}},
      rejected = {{role = "assistant", content = "y"}}}):find("prompt[1]: role must be system, user or assistant", 1, true))
    local a = {role = "user", content = "Q"}
    assert.truthy(problem({chosen = {a}, rejected = {a}}):find("do not differ", 1, true))
  end)

  it("encode through the model's template: the prompt with the generation prompt, each side after it", function()
    local t = tok()
    local ex = parse({prompt = {{role = "user", content = "Hi?"}}, chosen = {{role = "assistant", content = "Hello!"}},
      rejected = {{role = "assistant", content = "Go."}}})
    local enc = data.encode_preference(t, ex, {})
    assert.are.equal("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n", t:decode(enc.prompt))
    assert.are.equal("<think>\n\n</think>\n\nHello!<|im_end|>\n", t:decode(enc.chosen))
    assert.are.equal("<think>\n\n</think>\n\nGo.<|im_end|>\n", t:decode(enc.rejected))
  end)
end)

describe("Anthropic-HH transcripts", function()
  it("split after the last \"Assistant:\" of the common prefix", function()
    local ex = parse({chosen = "\n\nHuman: Hi\n\nAssistant: Sure, here it is.",
      rejected = "\n\nHuman: Hi\n\nAssistant: Sure, no."})
    assert.are.equal("\n\nHuman: Hi\n\nAssistant:", ex.prompt)
    assert.are.equal(" Sure, here it is.", ex.chosen)
    assert.are.equal(" Sure, no.", ex.rejected)
  end)

  it("keep earlier turns in the prompt", function()
    local pre = "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:"
    local ex = parse({chosen = pre .. " yes", rejected = pre .. " no"})
    assert.are.equal(pre, ex.prompt)
    assert.are.equal(" yes", ex.chosen)
  end)

  it("refuse identical transcripts", function()
    assert.truthy(problem({chosen = "\n\nHuman: A\n\nAssistant: B", rejected = "\n\nHuman: A\n\nAssistant: B"})
      :find("are the same transcript", 1, true))
  end)
end)

describe("K responses with votes or ranks", function()
  local function by_pair(list)
    local m = {}
    for _, ex in ipairs(list) do m[ex.pair[1] .. ">" .. ex.pair[2]] = ex end
    return m
  end

  it("become one pair per two responses the votes tell apart, p the pairwise vote share", function()
    local path = write_jsonl({{prompt = "Q", responses = {"a", "b", "c", "d"}, votes = {5, 3, 0, 3}}})
    local list = data.load(path, "preference")
    os.remove(path)
    local m = by_pair(list)
    assert.are.equal(5, #list)   -- b and d tie: no pair
    assert.are.equal(5 / 8, m["1>2"].p)
    assert.are.equal(1.0, m["1>3"].p)
    assert.are.equal(5 / 8, m["1>4"].p)
    assert.are.equal(1.0, m["2>3"].p)
    assert.are.equal(1.0, m["4>3"].p)
    assert.are.equal("a", m["1>2"].chosen)
    assert.are.equal("b", m["1>2"].rejected)
    assert.are.same({5, 3}, m["1>2"].votes)
    assert.is_nil(m["2>4"] or m["4>2"])
    for _, ex in ipairs(list) do assert.are.equal(1, ex.line) end
  end)

  it("take ranks (1 = best) as hard labels", function()
    local list = data.load(write_jsonl({{prompt = {{role = "user", content = "Q"}},
      responses = {{{role = "assistant", content = "x"}}, {{role = "assistant", content = "y"}}, {{role = "assistant", content = "z"}}},
      ranks = {2, 1, 3}}}), "preference")
    local m = by_pair(list)
    assert.are.equal(3, #list)
    assert.truthy(m["2>1"] and m["1>3"] and m["2>3"])
    assert.are.equal(1.0, m["2>1"].p)
    assert.are.equal("y", m["2>1"].chosen_messages[1].content)
    assert.are.equal("Q", m["2>1"].prompt_messages[1].content)
  end)

  it("refuse counts that do not fit", function()
    assert.truthy(problem({prompt = "Q", responses = {"a", "b", "c"}, votes = {1, 2}})
      :find("one number per response (3)", 1, true))
    assert.truthy(problem({prompt = "Q", responses = {"a", "b", "c"}}):find("give \"votes\" or \"ranks\"", 1, true))
    assert.truthy(problem({prompt = "Q", responses = {"a", "b", "c"}, votes = {2, 2, 2}}):find("tell no two responses apart", 1, true))
  end)
end)

describe("conversational data through a model's template", function()
  it("SFT messages train on the assistant's turns and their end-of-turn tokens", function()
    local t = tok()
    local path = write_jsonl({{messages = {{role = "user", content = "2+2?"}, {role = "assistant", content = "4"}}}})
    local loader = data.sft_loader(path, t, {batch_size = 1, shuffle = false})
    os.remove(path)
    for b in loader:epoch(1) do
      local ids, mask = b.ids:totable()[1], b.loss_mask:totable()[1]
      local trained = {}
      for i = 1, #ids - 1 do if mask[i] == 1 then trained[#trained + 1] = ids[i + 1] end end
      assert.are.equal("<think>\n\n</think>\n\n4<|im_end|>\n", t:decode(trained))
    end
  end)

  it("preference batches of conversational records mark each side's response", function()
    local t = tok()
    local path = write_jsonl({
      {prompt = {{role = "user", content = "Hi?"}}, chosen = {{role = "assistant", content = "Hello!"}},
        rejected = {{role = "assistant", content = "Go away."}}},
      {chosen = "\n\nHuman: Hi\n\nAssistant: Hello.", rejected = "\n\nHuman: Hi\n\nAssistant: No."},
    })
    local loader = data.preference_loader(path, t, {batch_size = 2, shuffle = false})
    os.remove(path)
    for b in loader:epoch(1) do
      local ids, cm = b.chosen.ids:totable()[1], b.chosen.completion_mask:totable()[1]
      local resp = {}
      for i = 1, #ids do if cm[i] == 1 then resp[#resp + 1] = ids[i] end end
      local text = t:decode(resp)
      assert.truthy(text:find("^<think>\n\n</think>\n\nHello!<|im_end|>\n"), text)
    end
  end)
end)
