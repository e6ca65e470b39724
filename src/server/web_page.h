// The page `lancet serve` answers at "/": a chat that streams from /v1/chat/completions. Plain
// HTML and JavaScript inside the binary, no build step.
#pragma once

namespace lancet::server {

inline constexpr const char* kWebPage = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lancet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
#log .m{white-space:pre-wrap;margin:.4rem 0;padding:.5rem .7rem;border-radius:.4rem}
#log .user{background:#e8eefc}#log .assistant{background:#f1f1f1}
form{display:flex;gap:.5rem}textarea{flex:1;height:4rem}
#opts{margin:.5rem 0;color:#555}#opts input{width:5rem}
</style></head><body>
<h1>lancet</h1>
<div id="log"></div>
<form id="f"><textarea id="q" placeholder="Message"></textarea><button id="send">Send</button></form>
<div id="opts">max tokens <input id="max" type="number" value="128" min="1">
temperature <input id="temp" type="number" value="0" step="0.1" min="0" max="2">
API key <input id="key" type="password" style="width:10rem"></div>
<script>
const log=document.getElementById('log'),msgs=[];
function add(role,text){const d=document.createElement('div');d.className='m '+role;
d.textContent=text;log.appendChild(d);return d;}
document.getElementById('f').onsubmit=async e=>{e.preventDefault();
const q=document.getElementById('q'),text=q.value.trim();if(!text)return;q.value='';
msgs.push({role:'user',content:text});add('user',text);const out=add('assistant','');
const headers={'Content-Type':'application/json'},key=document.getElementById('key').value;
if(key)headers['Authorization']='Bearer '+key;
const r=await fetch('/v1/chat/completions',{method:'POST',headers,body:JSON.stringify({
messages:msgs,stream:true,max_tokens:+document.getElementById('max').value,
temperature:+document.getElementById('temp').value})});
if(!r.ok){out.textContent='error: '+((await r.json()).error||{}).message;msgs.pop();return;}
const rd=r.body.getReader(),dec=new TextDecoder();let buf='',reply='';
for(;;){const {value,done}=await rd.read();if(done)break;buf+=dec.decode(value,{stream:true});
let i;while((i=buf.indexOf('\n\n'))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);
if(!ev.startsWith('data: '))continue;const data=ev.slice(6);if(data==='[DONE]')continue;
const j=JSON.parse(data);if(j.error){out.textContent+='\n[error: '+j.error.message+']';continue;}
const c=j.choices&&j.choices[0];if(c&&c.delta&&c.delta.content){reply+=c.delta.content;
out.textContent=reply;}}}
msgs.push({role:'assistant',content:reply});};
</script></body></html>
)HTML";

}  // namespace lancet::server
