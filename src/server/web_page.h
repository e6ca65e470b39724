// The page `lancet serve` answers at "/": three tabs over the server's own routes — a chat that
// streams from /v1/chat/completions (with an image upload sent as a data URL), text-to-image from
// /v1/images/generations (the picture shown), and video jobs on /v1/videos (a progress bar from
// polling the job, the finished MP4 playing). Plain HTML and JavaScript inside the binary, no
// build step. The element ids are what tests/browser drives.
#pragma once

namespace lancet::server {

inline constexpr const char* kWebPage = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lancet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
nav button{padding:.4rem .9rem;border:1px solid #bbb;background:#f6f6f6;border-radius:.3rem}
nav button.on{background:#dfe7fb;border-color:#7a93d6}
section{display:none;margin-top:1rem}section.on{display:block}
#log .m{white-space:pre-wrap;margin:.4rem 0;padding:.5rem .7rem;border-radius:.4rem}
#log .user{background:#e8eefc}#log .assistant{background:#f1f1f1}
#log img{max-width:12rem;display:block;margin-bottom:.3rem}
form{display:flex;gap:.5rem;flex-wrap:wrap;align-items:center}textarea{flex:1;height:4rem;min-width:16rem}
.opts{margin:.5rem 0;color:#555}.opts input{width:5rem}
.status{color:#555;margin:.5rem 0;min-height:1.2em}.err{color:#b00}
#iout{max-width:100%;image-rendering:pixelated;min-width:128px;display:none}
#vout{max-width:100%;min-width:128px;display:none}progress{width:100%}
</style></head><body>
<h1>lancet</h1>
<nav><button id="tab-chat" class="on">Chat</button> <button id="tab-image">Text to image</button>
<button id="tab-video">Video</button></nav>
<div class="opts">API key <input id="key" type="password" style="width:10rem"></div>

<section id="chat" class="on">
<div id="log"></div>
<form id="f"><textarea id="q" placeholder="Message"></textarea>
<input id="img" type="file" accept="image/png,image/jpeg,image/webp" title="Attach an image">
<button id="send">Send</button></form>
<div class="opts">max tokens <input id="max" type="number" value="128" min="1">
temperature <input id="temp" type="number" value="0" step="0.1" min="0" max="2">
<span id="imgnote"></span></div>
</section>

<section id="image">
<form id="fi"><textarea id="ip" placeholder="Describe the picture"></textarea>
<button id="igo">Generate</button></form>
<div class="opts">size <input id="isize" value="256x256"> steps <input id="isteps" type="number"
value="30" min="1"> seed <input id="iseed" type="number" value="42" min="0"> cfg <input id="icfg"
type="number" value="4" step="0.5" min="0"></div>
<div id="istatus" class="status"></div><img id="iout" alt="generated picture">
</section>

<section id="video">
<form id="fv"><textarea id="vp" placeholder="Describe the video"></textarea>
<button id="vgo">Start job</button><button id="vcancel" type="button" disabled>Cancel</button></form>
<div class="opts">task <select id="vtask"><option>t2v</option><option>i2v</option></select>
first frame (i2v) <input id="vimg" type="file" accept="image/png,image/jpeg,image/webp"><br>
size <input id="vsize" value="256x256"> frames <input id="vframes" type="number" value="17"
min="1"> steps <input id="vsteps" type="number" value="30" min="1"> seed <input id="vseed"
type="number" value="42" min="0"></div>
<progress id="vprog" value="0" max="100"></progress>
<div id="vstatus" class="status"></div><video id="vout" controls loop muted playsinline></video>
</section>

<script>
const $=id=>document.getElementById(id);
for(const t of ['chat','image','video'])$('tab-'+t).onclick=()=>{
for(const u of ['chat','image','video']){$('tab-'+u).classList.toggle('on',u===t);
$(u).classList.toggle('on',u===t);}};
function headers(json){const h={},k=$('key').value;if(json)h['Content-Type']='application/json';
if(k)h['Authorization']='Bearer '+k;return h;}
async function errText(r){try{return ((await r.json()).error||{}).message||r.statusText;}
catch(e){return r.status+' '+r.statusText;}}
function dataUrl(file){return new Promise((ok,bad)=>{const fr=new FileReader();
fr.onload=()=>ok(fr.result);fr.onerror=()=>bad(fr.error);fr.readAsDataURL(file);});}

// Chat. An attached image starts a new conversation: the server runs it in Lance's x2t layout
// (one user message with one image).
const log=$('log');let msgs=[];
function add(role,text,img){const d=document.createElement('div');d.className='m '+role;
if(img){const i=document.createElement('img');i.src=img;d.appendChild(i);}
d.appendChild(document.createTextNode(text));log.appendChild(d);return d;}
$('f').onsubmit=async e=>{e.preventDefault();
const q=$('q'),text=q.value.trim(),file=$('img').files[0];if(!text)return;q.value='';
let content=text,url=null;
if(file){url=await dataUrl(file);msgs=[];log.textContent='';$('img').value='';
content=[{type:'image_url',image_url:{url}},{type:'text',text}];}
msgs.push({role:'user',content});add('user',text,url);const out=add('assistant','');
const r=await fetch('/v1/chat/completions',{method:'POST',headers:headers(true),
body:JSON.stringify({messages:msgs,stream:true,max_tokens:+$('max').value,
temperature:+$('temp').value})});
if(!r.ok){out.textContent='error: '+await errText(r);out.classList.add('err');msgs.pop();return;}
const rd=r.body.getReader(),dec=new TextDecoder();let buf='',reply='';
for(;;){const {value,done}=await rd.read();if(done)break;buf+=dec.decode(value,{stream:true});
let i;while((i=buf.indexOf('\n\n'))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);
if(!ev.startsWith('data: '))continue;const data=ev.slice(6);if(data==='[DONE]'){
out.dataset.done='1';continue;}
const j=JSON.parse(data);if(j.error){out.textContent+='\n[error: '+j.error.message+']';continue;}
const c=j.choices&&j.choices[0];if(c&&c.delta&&c.delta.content){reply+=c.delta.content;
out.textContent=reply;}}}
msgs.push({role:'assistant',content:reply});
$('imgnote').textContent=url?'(image chats are one question each)':'';};

// Text to image.
$('fi').onsubmit=async e=>{e.preventDefault();const st=$('istatus'),img=$('iout');
const prompt=$('ip').value.trim();if(!prompt)return;st.className='status';
st.textContent='generating…';$('igo').disabled=true;const t0=performance.now();
try{const r=await fetch('/v1/images/generations',{method:'POST',headers:headers(true),
body:JSON.stringify({prompt,size:$('isize').value,steps:+$('isteps').value,
seed:+$('iseed').value,cfg:+$('icfg').value,response_format:'b64_json'})});
if(!r.ok){st.textContent='error: '+await errText(r);st.className='status err';return;}
const j=await r.json();img.onload=()=>{st.textContent='done in '+
((performance.now()-t0)/1000).toFixed(1)+' s ('+img.naturalWidth+'x'+img.naturalHeight+')';
img.dataset.done='1';};img.style.display='block';
img.src='data:image/png;base64,'+j.data[0].b64_json;}
finally{$('igo').disabled=false;}};

// Video jobs: POST, poll the status into the progress bar, then play the MP4.
let job=null;
$('fv').onsubmit=async e=>{e.preventDefault();const st=$('vstatus'),bar=$('vprog'),v=$('vout');
const prompt=$('vp').value.trim();if(!prompt)return;st.className='status';bar.value=0;
v.style.display='none';delete v.dataset.done;
const body={task:$('vtask').value,prompt,frames:+$('vframes').value,steps:+$('vsteps').value,
seed:+$('vseed').value};
if(body.task==='i2v'){const f=$('vimg').files[0];
if(!f){st.textContent='error: i2v needs a first frame';st.className='status err';return;}
body.image=await dataUrl(f);}else body.size=$('vsize').value;
const r=await fetch('/v1/videos',{method:'POST',headers:headers(true),body:JSON.stringify(body)});
if(!r.ok){st.textContent='error: '+await errText(r);st.className='status err';return;}
job=(await r.json()).id;$('vgo').disabled=true;$('vcancel').disabled=false;
for(;;){const s=await (await fetch('/v1/videos/'+job,{headers:headers(false)})).json();
bar.value=s.progress||0;st.textContent=s.status+(s.steps?' — step '+s.step+'/'+s.steps:'');
if(s.status==='succeeded'){const c=await fetch('/v1/videos/'+job+'/content',
{headers:headers(false)});v.src=URL.createObjectURL(await c.blob());v.style.display='block';
v.onloadeddata=()=>{v.dataset.done='1';};v.play().catch(()=>{});break;}
if(s.status==='failed'||s.status==='cancelled'){if(s.error)st.textContent+=': '+s.error.message;
break;}
await new Promise(ok=>setTimeout(ok,300));}
$('vgo').disabled=false;$('vcancel').disabled=true;};
$('vcancel').onclick=async()=>{if(job)await fetch('/v1/videos/'+job,{method:'DELETE',
headers:headers(false)});};
</script></body></html>
)HTML";

}  // namespace lancet::server
