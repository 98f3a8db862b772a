--- lualign.models: model families and Hugging Face folders.
--
--     la.models.gpt(config)                  -- a GPT-2-style decoder (lualign.models.gpt)
--     la.models.from_pretrained(dir [, opts]) -- a Hugging Face folder: gpt2, llama, mistral, qwen2, qwen3
--     la.models.from_config(config)          -- a fresh model from config.json's keys
--     model:save_pretrained(dir [, opts])    -- back to a Hugging Face folder
local hf = require "lualign.models.hf"

local models = {gpt = require "lualign.models.gpt", llama = require "lualign.models.llama", hf = hf}

--- The model of a Hugging Face folder (config.json, generation_config.json,
-- safetensors weights); opts override config keys (value_head = true, ...).
-- See lualign.models.hf.from_pretrained.
function models.from_pretrained(dir, opts) return hf.from_pretrained(dir, opts) end

--- A freshly initialised model from a table with the keys of a Hugging Face
-- config.json (model_type gpt2, llama, mistral, qwen2 or qwen3).
function models.from_config(config) return hf.from_config(config) end

return models
