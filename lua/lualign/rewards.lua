--- lualign.rewards: verifiable rewards for GRPO and PPO, and loading the
-- reward functions a recipe is given.
--
-- A reward function is function(prompt, completion, example) -> number:
-- prompt is the prompt's text as the data file has it (before any
-- prompt_format), completion the sampled text (special tokens left out), and
-- example every field of the prompt's JSONL line (prompt, completion or
-- answer, source, ...).
--
--     local fn = rewards.load("exact_match")       -- a built-in, by name
--     local fn = rewards.load("my_reward.lua")     -- a Lua file returning one

local util = require "lualign.util"

local rewards = {}

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

--- The answer a completion gives: its first line, without surrounding
-- white space (a model that goes on after its answer is judged on the answer).
function rewards.first_line(completion)
  return trim(completion:match("^[^\n]*"))
end

--- The reference answer of an example: its "answer" field, else its
-- "completion" (an SFT file's), trimmed; an error naming the fields when
-- it has neither.
function rewards.reference_answer(example)
  local a = example.answer
  if a == nil then a = example.completion end
  if type(a) ~= "string" and type(a) ~= "number" then
    util.error("exact_match: the example has no \"answer\" or \"completion\" field to compare with (prompt: "
      .. tostring(example.prompt) .. ")")
  end
  return trim(tostring(a))
end

--- The built-in reward `exact_match`: 1 when the completion's first line is
-- the reference answer exactly (case and inner spaces count; surrounding white
-- space does not), else 0.
function rewards.exact_match(_, completion, example)
  return rewards.first_line(completion) == rewards.reference_answer(example) and 1 or 0
end

-- The built-in reward functions, by the name a recipe's reward_script gives.
local builtin = {exact_match = rewards.exact_match}

--- A reward function from a name: a built-in, or the path
-- of a Lua file that returns function(prompt, completion, example) -> number.
-- Built in: exact_match.
-- `key` names the config key in errors.
function rewards.load(name, key)
  key = key or "reward_script"
  if builtin[name] then return builtin[name] end
  local f = io.open(name, "rb")
  if not f then
    local names = util.sorted_keys(builtin)
    local hint = util.closest(name, names)
    error(string.format("%s: no such file: %s, nor a built-in reward (%s)%s", key, name, table.concat(names, ", "),
      hint and (" -- did you mean '" .. hint .. "'?") or ""), 0)
  end
  f:close()
  local chunk, err = loadfile(name)
  if not chunk then error(key .. ": " .. err, 0) end
  local ok, fn = pcall(chunk)
  if not ok then error(key .. ": " .. name .. ": " .. tostring(fn), 0) end
  if type(fn) ~= "function" then
    error(string.format("%s: %s must return function(prompt, completion, example) -> number (it returned %s)",
      key, name, type(fn)), 0)
  end
  return fn
end

--- Calls a reward function and checks what it returns: a finite number.
function rewards.call(fn, name, prompt, completion, example)
  local v = fn(prompt, completion, example)
  if type(v) == "boolean" then v = v and 1 or 0 end
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    error(string.format("reward '%s' returned %s for the completion %q (a finite number is needed)", name,
      tostring(v), completion), 0)
  end
  return v
end

return rewards
