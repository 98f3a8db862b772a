-- Hugging Face tokenizers and chat templates against the references of
-- tests/fixtures/tokenizer_refs.json (made by make_tokenizer_fixtures.js with
-- the Rust `tokenizers` library's Node binding, transformers.js and
-- @huggingface/jinja): ids, ids with special tokens, decoding and chat
-- renders of real tokenizer files (Qwen3 and Mistral shipped in
-- tests/fixtures/tokenizers/; Llama 3, Llama 3.1 and Gemma 3 when the script
-- has put them in build/tokenizers/), small tokenizer.json files covering
-- each component, and the chat templates of chat_templates.json.

local la = require "lualign"
local cjson = require "cjson"
local jinja = require "lualign.jinja"

local T = la.tokenizer

-- Loading a large tokenizer.json takes a second: each folder once.
local loaded = {}
local function load(dir)
  loaded[dir] = loaded[dir] or T.load(dir)
  return loaded[dir]
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local refs = cjson.decode(read("tests/fixtures/tokenizer_refs.json"))
local templates = cjson.decode(read("tests/fixtures/chat_templates.json"))

local function ints(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = math.tointeger(v) end
  return out
end

local function errmsg(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

-- Where a tokenizer's files are: shipped ones in the repository, the others
-- where the fixture script leaves them ($LUALIGN_TOKENIZERS overrides).
local function tokenizer_dir(name, entry)
  if entry.shipped then return "tests/fixtures/tokenizers/" .. name end
  local base = os.getenv("LUALIGN_TOKENIZERS") or "build/tokenizers"
  local dir = base .. "/" .. name
  if exists(dir .. "/tokenizer.json") then return dir end
  return nil, string.format("%s: its tokenizer files may not be shipped (%s); run tests/fixtures/make_tokenizer_fixtures.js "
    .. "to put them in %s and test it", name, entry.about, base)
end

local names = {}
for name in pairs(refs.tokenizers) do names[#names + 1] = name end
table.sort(names)

describe("real tokenizer files match the Rust tokenizers library and transformers.js", function()
  it("ships the families whose licence allows it", function()
    assert.truthy(refs.tokenizers.qwen3.shipped and refs.tokenizers.mistral.shipped)
    for _, n in ipairs({"qwen3", "mistral"}) do
      assert.truthy(exists("tests/fixtures/tokenizers/" .. n .. "/tokenizer.json"), n)
    end
  end)

  for _, name in ipairs(names) do
    local entry = refs.tokenizers[name]
    local dir, why = tokenizer_dir(name, entry)
    if not dir then
      pending(why)
    else
      describe(name, function()
        local tok
        setup(function() tok = load(dir) end)

        it("encodes every text of the set to the reference ids, with and without special tokens", function()
          for i, text in ipairs(refs.texts) do
            assert.are.same(ints(entry.ids[i]), tok:encode(text), string.format("text %d: %q", i, text))
            assert.are.same(ints(entry.ids_special[i]), tok:encode(text, {add_special_tokens = true}),
              string.format("text %d with special tokens: %q", i, text))
          end
        end)

        it("decodes as the Rust library does, and as transformers does with the config's clean-up", function()
          for i in ipairs(refs.texts) do
            local ids = ints(entry.ids_special[i])
            assert.are.equal(entry.decoded[i], tok:decode(ids, {clean_up_tokenization_spaces = false}), "text " .. i)
            assert.are.equal(entry.decoded_skip[i],
              tok:decode(ids, {skip_special_tokens = true, clean_up_tokenization_spaces = false}), "text " .. i)
            assert.are.equal(entry.decoded_transformers[i], tok:decode(ids), "text " .. i)
          end
        end)

        if entry.chats then
          it("renders its own chat template as transformers.js does, and tokenizes the render", function()
            for _, c in ipairs(entry.chats) do
              local conv = refs.conversations[c.conversation + 1]
              local opts = {add_generation_prompt = c.add_generation_prompt, tokenize = false,
                variables = refs.templates_context}
              if c.error then
                assert.truthy(errmsg(tok.apply_chat_template, tok, conv, opts):find(c.error, 1, true))
              else
                assert.are.equal(c.text, tok:apply_chat_template(conv, opts))
                opts.tokenize = nil
                local ids, mask = tok:apply_chat_template(conv, opts)
                assert.are.same(ints(c.ids), ids)
                assert.are.equal(#ids, #mask)
              end
            end
          end)
        end
      end)
    end
  end
end)

describe("tokenizer.json components against the Rust tokenizers library", function()
  local snames = {}
  for name in pairs(refs.synthetic.tokenizers) do snames[#snames + 1] = name end
  table.sort(snames)
  for _, name in ipairs(snames) do
    it(name, function()
      local entry = refs.synthetic.tokenizers[name]
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write(cjson.encode(entry.tokenizer))
      f:close()
      local tok = T.load(path)
      os.remove(path)
      for i, text in ipairs(refs.synthetic.texts) do
        assert.are.same(ints(entry.ids[i]), tok:encode(text), string.format("%q", text))
        assert.are.same(ints(entry.ids_special[i]), tok:encode(text, {add_special_tokens = true}), string.format("%q", text))
        assert.are.equal(entry.decoded[i], tok:decode(ints(entry.ids[i])), string.format("%q", text))
      end
    end)
  end
end)

describe("bytes that are not UTF-8", function()
  it("round-trip through a byte-level tokenizer (Qwen3)", function()
    local tok = load("tests/fixtures/tokenizers/qwen3")
    local seed = 7
    for _ = 1, 50 do
      local bytes = {}
      for i = 1, 40 do
        seed = (seed * 1103515245 + 12345) % 2147483648
        bytes[i] = string.char(seed % 256)
      end
      local s = "ok " .. table.concat(bytes) .. " \xff\xfe tail"
      assert.are.equal(s, tok:decode(tok:encode(s)))
    end
  end)

  it("become <0xXX> tokens with byte_fallback (Mistral), and U+FFFD when decoded", function()
    local tok = load("tests/fixtures/tokenizers/mistral")
    local ids = tok:encode("a\xffb")
    local ff = tok:token_to_id("<0xFF>")
    assert.truthy(ff)
    local found = false
    for _, id in ipairs(ids) do if id == ff then found = true end end
    assert.is_true(found, table.concat(ids, ","))
    assert.are.equal("a\u{FFFD}b", tok:decode(ids))
  end)
end)

describe("the chat templates of chat_templates.json", function()
  local tnames = {}
  for name in pairs(refs.templates) do tnames[#tnames + 1] = name end
  table.sort(tnames)
  for _, name in ipairs(tnames) do
    it(name .. " (" .. templates[name].model .. ") renders as @huggingface/jinja does", function()
      for _, r in ipairs(refs.templates[name].renders) do
        local ctx = {messages = refs.conversations[(r.conversation or 0) + 1],
          add_generation_prompt = r.add_generation_prompt}
        if r.tools then
          ctx = {messages = {{role = "user", content = "Weather in Paris?"}}, tools = refs.tools, add_generation_prompt = true}
        end
        for k, v in pairs(refs.templates[name].tokens) do ctx[k] = v end
        for k, v in pairs(refs.templates_context) do ctx[k] = v end
        if r.error then
          assert.are.equal("chat template: " .. r.error, errmsg(jinja.render, templates[name].template, ctx))
        else
          assert.are.equal(r.text, (jinja.render(templates[name].template, ctx)))
        end
      end
    end)
  end

  it("small templates, one construct each, render as @huggingface/jinja does", function()
    for _, c in ipairs(refs.constructs) do
      if c.error then
        assert.are.equal("chat template: " .. c.error, errmsg(jinja.render, c.template, c.context))
      else
        assert.are.equal(c.text, (jinja.render(c.template, c.context)), c.template)
      end
    end
  end)
end)

describe("apply_chat_template", function()
  local qwen
  setup(function() qwen = load("tests/fixtures/tokenizers/qwen3") end)

  local conv = {
    {role = "system", content = "Be brief."},
    {role = "user", content = "Hi"},
    {role = "assistant", content = "Hello!"},
    {role = "user", content = "2+2?"},
    {role = "assistant", content = "4"},
  }

  local function masked_text(tok, ids, mask)
    local parts, cur = {}, {}
    for i, id in ipairs(ids) do
      if mask[i] == 1 then cur[#cur + 1] = id
      elseif #cur > 0 then parts[#parts + 1] = tok:decode(cur); cur = {} end
    end
    if #cur > 0 then parts[#parts + 1] = tok:decode(cur) end
    return parts
  end

  it("reads the model's roles and template from tokenizer_config.json", function()
    assert.are.equal(qwen:token_to_id("<|im_end|>"), qwen.eos_id)
    assert.are.equal(qwen:token_to_id("<|endoftext|>"), qwen.pad_id)
    assert.is_nil(qwen.bos_id)
    assert.are.equal(131072, qwen.model_max_length)
    assert.truthy(qwen.chat_template:find("im_start", 1, true))
    local mistral = load("tests/fixtures/tokenizers/mistral")
    assert.are.equal(1, mistral.bos_id)
    assert.are.equal(2, mistral.eos_id)
    assert.are.equal(0, mistral.unk_id)
    assert.is_nil(mistral.chat_template)
  end)

  it("marks each assistant turn and its end-of-turn token, and nothing else (Qwen3, history rewritten)", function()
    local ids, mask = qwen:apply_chat_template(conv)
    assert.are.same({"Hello!<|im_end|>\n", "<think>\n\n</think>\n\n4<|im_end|>\n"}, masked_text(qwen, ids, mask))
    local text = qwen:apply_chat_template(conv, {tokenize = false})
    assert.are.equal(text, qwen:decode(ids))
  end)

  it("marks turns of a template whose history renders the same (ChatML, Zephyr, Mistral)", function()
    local ids, mask = qwen:apply_chat_template(conv, {chat_template = templates.chatml.template})
    assert.are.same({"Hello!<|im_end|>\n", "4<|im_end|>\n"}, masked_text(qwen, ids, mask))
    local mistral = load("tests/fixtures/tokenizers/mistral")
    local c2 = {conv[2], conv[3], conv[4], conv[5]}
    ids, mask = mistral:apply_chat_template(c2, {chat_template = templates.mistral_v01.template})
    assert.are.equal("<s>[INST] Hi [/INST]Hello!</s> [INST] 2+2? [/INST]4</s> ",
      mistral:apply_chat_template(c2, {chat_template = templates.mistral_v01.template, tokenize = false}))
    local parts = masked_text(mistral, ids, mask)
    assert.are.equal(2, #parts)
    assert.truthy(parts[1]:find("^%s?Hello!</s>"), parts[1])
    assert.truthy(parts[2]:find("^%s?4</s>"), parts[2])
  end)

  it("uses {% generation %} blocks when the template has them", function()
    local tpl = "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
      .. "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
      .. "{% endfor %}"
    local ids, mask = qwen:apply_chat_template(conv, {chat_template = tpl})
    assert.are.same({"Hello!<|im_end|>", "4<|im_end|>"}, masked_text(qwen, ids, mask))
  end)

  it("passes template variables (Qwen3's enable_thinking) and the generation prompt", function()
    local text = qwen:apply_chat_template({{role = "user", content = "Hi"}},
      {add_generation_prompt = true, tokenize = false, variables = {enable_thinking = false}})
    assert.are.equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", text)
  end)

  it("checks its options and names the template's errors", function()
    assert.truthy(errmsg(qwen.apply_chat_template, qwen, conv, {add_generation_promt = true})
      :find("did you mean 'add_generation_prompt'", 1, true))
    assert.truthy(errmsg(qwen.apply_chat_template, qwen, conv, {chat_template = "nope"})
      :find('no chat template named "nope"', 1, true))
    assert.truthy(errmsg(qwen.apply_chat_template, qwen, conv, {chat_template = "{% include 'x' %}"})
      :find("chat template line 1: unsupported construct {% include %}", 1, true))
    local mistral = load("tests/fixtures/tokenizers/mistral")
    assert.truthy(errmsg(mistral.apply_chat_template, mistral, conv, {chat_template = templates.mistral_v01.template})
      :find("Conversation roles must alternate", 1, true))
  end)

  it("keeps the built-in layout for lualign's own tokenizers", function()
    local tok = T.byte()
    local ids, mask = tok:apply_chat_template({{role = "user", content = "a"}, {role = "assistant", content = "b"}})
    assert.are.equal("<|user|>\na<|end|>\n<|assistant|>\nb<|end|>\n", tok:decode(ids))
    assert.are.equal(tok:decode(ids), tok:apply_chat_template({{role = "user", content = "a"},
      {role = "assistant", content = "b"}}, {tokenize = false}))
    local n = 0
    for _, m in ipairs(mask) do n = n + m end
    assert.are.equal(2, n)   -- "b" and <|end|>
  end)
end)

describe("loading", function()
  -- Qwen3's tokenizer.json decodes to about 40 MB of Lua tables, garbage once
  -- the tokenizer is built; left in the heap, they put off the collector's next
  -- cycle, and what was encoded next took fresh pages instead of reusing memory.
  it("collects the decoded files before returning", function()
    collectgarbage()
    local before = collectgarbage("count")
    local tok = T.load("tests/fixtures/tokenizers/qwen3")
    local grown = collectgarbage("count") - before
    assert.truthy(grown < 4096, string.format("the Lua heap grew by %.0f KB", grown))
    assert.are.same(load("tests/fixtures/tokenizers/qwen3"):encode("Hello world"), tok:encode("Hello world"))
  end)

  it("leaves a stopped collector stopped", function()
    collectgarbage()
    local before = collectgarbage("count")
    collectgarbage("stop")
    local ok, tok = pcall(T.load, "tests/fixtures/tokenizers/mistral")
    local grown = collectgarbage("count") - before
    collectgarbage("restart")
    assert.truthy(ok, tok)
    assert.truthy(grown > 4096, string.format("the Lua heap grew by %.0f KB", grown))
  end)
end)

describe("saving", function()
  it("refuses a tokenizer whose pipeline tokenizer.json of GPT-2's scheme cannot hold", function()
    local mistral = load("tests/fixtures/tokenizers/mistral")
    assert.truthy(errmsg(mistral.save, mistral, os.tmpname()):find("copy its folder instead", 1, true))
  end)
end)

describe("encode with add_special_tokens", function()
  it("follows the post-processor: Mistral's BOS, nothing for Qwen3", function()
    local mistral = load("tests/fixtures/tokenizers/mistral")
    local ids = mistral:encode("Hi", {add_special_tokens = true})
    assert.are.equal(1, ids[1])
    assert.are_not.equal(2, ids[#ids])
    local qwen = load("tests/fixtures/tokenizers/qwen3")
    assert.are.same(qwen:encode("Hi"), qwen:encode("Hi", {add_special_tokens = true}))
  end)

  it("checks its options, and load's", function()
    assert.truthy(errmsg(T.load, "tests/fixtures/tokenizers/qwen3", {eos_tokn = "x"}):find("did you mean 'eos_token'", 1, true))
    local qwen = load("tests/fixtures/tokenizers/qwen3")
    assert.truthy(errmsg(qwen.encode, qwen, "x", {add_special_token = true}):find("did you mean 'add_special_tokens'", 1, true))
  end)
end)
