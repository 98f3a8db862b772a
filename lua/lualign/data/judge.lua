--- The held-out sentiment judge: scores text with the VADER ratings of the
-- judge panel (ratings 6-10 of each lexicon entry, data/vader/judge.tsv), which
-- never made a training label.  See data/README.md for the annotator model.
--
--   local judge = la.data.judge()
--   judge:score(" wonderful.")          --> 3.2, 1   (mean rating, words matched)
--   judge:prob("wonderful", "fine")     --> share of judge-rater pairs preferring the first
--   judge:prefers(a_text, b_text)       --> 1, 0 or 0.5 by score

local M = {}

local Judge = {}
Judge.__index = Judge

--- Loads a judge file: "word<TAB>mean<TAB>r1,r2,..." lines, # comments.
function M.load(path)
  local f, err = io.open(path, "rb")
  if not f then error("judge: cannot open " .. tostring(err), 2) end
  local words, n = {}, 0
  local lineno = 0
  for line in f:lines() do
    lineno = lineno + 1
    if line:find("%S") and not line:match("^#") then
      local w, m, rs = line:match("^([^\t]+)\t([^\t]+)\t([^\t]*)$")
      local mean = tonumber(m)
      if not w or not mean then
        f:close()
        error(string.format("%s:%d: judge: expected word<TAB>mean<TAB>ratings", path, lineno), 2)
      end
      local ratings = {}
      for x in rs:gmatch("[^,]+") do ratings[#ratings + 1] = tonumber(x) end
      words[w] = {mean = mean, ratings = ratings}
      n = n + 1
    end
  end
  f:close()
  return setmetatable({words = words, size = n, path = path}, Judge)
end

--- The lexicon words of a text, lowercased, in order.
function Judge:tokens(text)
  local out = {}
  for w in text:lower():gmatch("[a-z][a-z']*") do
    if self.words[w] then out[#out + 1] = w
    else
      local bare = w:gsub("'+$", "")
      if self.words[bare] then out[#out + 1] = bare end
    end
  end
  return out
end

--- Mean judge rating (-4 .. 4) of the lexicon words in text, and how many there
-- were; a text with none scores 0 (neutral).
function Judge:score(text)
  local toks = self:tokens(text)
  if #toks == 0 then return 0.0, 0 end
  local s = 0
  for _, w in ipairs(toks) do s = s + self.words[w].mean end
  return s / #toks, #toks
end

--- Share of judge-rater pairs (one rating of each word) that rate word a above
-- word b, ties counted half: the judge's soft preference for a over b.
-- Either argument may be a text: its first lexicon word is used.  nil when a
-- word is not in the lexicon.
function Judge:prob(a, b)
  local ta, tb = self:tokens(a)[1], self:tokens(b)[1]
  if not ta or not tb then return nil end
  local ra, rb = self.words[ta].ratings, self.words[tb].ratings
  local s = 0
  for _, x in ipairs(ra) do
    for _, y in ipairs(rb) do
      if x > y then s = s + 1 elseif x == y then s = s + 0.5 end
    end
  end
  return s / (#ra * #rb)
end

--- 1 when the judge scores text a above text b, 0 when below, 0.5 on a tie.
function Judge:prefers(a, b)
  local sa, sb = self:score(a), self:score(b)
  if sa > sb then return 1 elseif sa < sb then return 0 end
  return 0.5
end

return M
