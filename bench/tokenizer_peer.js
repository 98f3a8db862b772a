// One timed run of an npm tokenizer over the benchmark corpus, for
// bench/tokenizer.lua.  Usage: node bench/tokenizer_peer.js PEER corpus.json [DIR]
// PEER: gpt-3-encoder | js-tiktoken | gpt-tokenizer | tiktoken (GPT-2), or
// transformers.js | tokenizers-rust (the tokenizer.json of DIR)
// Prints: "pass1_s=... pass2_s=... bytes=... tokens=..."
'use strict';
const fs = require('fs');

const [peer, corpusPath, dir] = process.argv.slice(2);
const docs = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));

let encode;
if (peer === 'gpt-3-encoder') {
  encode = require('gpt-3-encoder').encode;
} else if (peer === 'js-tiktoken') {
  const { Tiktoken } = require('js-tiktoken/lite');
  const ranks = require('js-tiktoken/ranks/gpt2');
  const enc = new Tiktoken(ranks.default || ranks);
  encode = (s) => enc.encode(s, [], []);
} else if (peer === 'gpt-tokenizer') {
  const enc = require('gpt-tokenizer/encoding/r50k_base');
  encode = (s) => enc.encode(s, { disallowedSpecial: new Set() });
} else if (peer === 'tiktoken') {
  const enc = require('tiktoken').get_encoding('gpt2');
  encode = (s) => enc.encode_ordinary(s);
} else if (peer === 'transformers.js') {
  // transformers.js's tokenizer (JavaScript), as AutoTokenizer builds it
  const { PreTrainedTokenizer } = require('@huggingface/transformers');
  const tok = new PreTrainedTokenizer(JSON.parse(fs.readFileSync(dir + '/tokenizer.json', 'utf8')),
    JSON.parse(fs.readFileSync(dir + '/tokenizer_config.json', 'utf8')));
  encode = (s) => tok.encode(s, { add_special_tokens: false });
} else if (peer === 'tokenizers-rust') {
  // Hugging Face's Rust tokenizers through its Node binding (native code)
  const { Tokenizer } = require('@anush008/tokenizers');
  const tok = Tokenizer.fromFile(dir + '/tokenizer.json');
  encode = async (s) => (await tok.encode(s, null, { addSpecialTokens: false })).getIds();
} else {
  throw new Error('unknown peer ' + peer);
}

let bytes = 0;
for (const d of docs) bytes += Buffer.byteLength(d, 'utf8');

async function pass() {
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  for (const d of docs) tokens += (await encode(d)).length;
  const t1 = process.hrtime.bigint();
  return [Number(t1 - t0) / 1e9, tokens];
}

(async () => {
  const [s1, n1] = await pass();
  const [s2, n2] = await pass();
  if (n1 !== n2) throw new Error('token counts differ between passes');
  console.log(`pass1_s=${s1} pass2_s=${s2} bytes=${bytes} tokens=${n1}`);
})();
