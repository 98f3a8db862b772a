--- lualign.models: model families.  la.models.gpt(config) builds a GPT.
return {gpt = require "lualign.models.gpt"}
