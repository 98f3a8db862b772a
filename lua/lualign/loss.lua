--- lualign.loss: training losses as thin wrappers over fused C kernels.
-- Each returns a scalar loss tensor and a table of metrics.

local core = require "lualign.core"
local K = core.nn

local loss = {}

--- Mean cross-entropy of logits (N, V) — or (B, T, V), flattened — against
-- 0-based targets of the matching shape.  opts: ignore_index (-100),
-- label_smoothing (0).  Metrics: tokens (rows counted).
function loss.cross_entropy(logits, targets, opts)
  if logits:dim() > 2 then
    logits = logits:reshape(-1, logits:size(-1))
    targets = targets:reshape(-1)
  end
  local value, count = K.cross_entropy(logits, targets, opts)
  return value, {tokens = count}
end

return loss
