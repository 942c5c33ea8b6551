// The chat page: a multi-turn conversation with streamed replies from /v1/chat/completions (SSE).
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];  // {role, content} of the conversation so far (without the system prompt)
let controller = null;
let modelName = null;

for (const id of ["system", "temperature", "max_tokens", "api_key"]) {  // settings survive a reload
  const saved = localStorage.getItem("llmchain." + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem("llmchain." + id, $(id).value));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if ($("api_key").value) h["Authorization"] = "Bearer " + $("api_key").value;
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.statusText);
    modelName = j.data[0].id;
    $("model").textContent = modelName;
  } catch (e) {
    $("model").textContent = "(model unavailable: " + e.message + ")";
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = text;
  div.append(label, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.parentElement.dataset.streaming = "true";
  const messages = [];
  if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value.trim() });
  messages.push(...history);
  const body = {
    model: modelName, messages, stream: true, stream_options: { include_usage: true },
    temperature: parseFloat($("temperature").value), max_tokens: parseInt($("max_tokens").value, 10),
  };
  controller = new AbortController();
  setBusy(true);
  $("status").textContent = "generating…";
  let reply = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    await readEvents(r, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.choices && chunk.choices.length && chunk.choices[0].delta.content) {
        reply += chunk.choices[0].delta.content;
        out.textContent = reply;
        $("log").scrollTop = $("log").scrollHeight;
      }
      if (chunk.choices && chunk.choices.length && chunk.choices[0].citations) {
        showSources(out.parentElement, chunk.choices[0].citations, chunk.context || []);
      }
      if (chunk.timings) {
        const t = chunk.timings;
        $("status").textContent = `${t.predicted_n} tokens · ${t.predicted_per_second} tokens/s`;
      }
    });
  } catch (e) {
    if (e.name === "AbortError") {
      $("status").textContent = "stopped";
    } else {
      out.parentElement.classList.add("error");
      out.textContent = reply + (reply ? "\n" : "") + "error: " + e.message;
      $("status").textContent = "";
    }
  } finally {
    out.parentElement.dataset.streaming = "false";
    history.push({ role: "assistant", content: reply });
    controller = null;
    setBusy(false);
  }
}

// Citations (a server started with --index): one link per cited passage under the answer; a click opens
// the passage with its source, offsets and the text around it (GET /v1/passages/{id}).
function sourceLink(p) {
  const a = document.createElement("a");
  a.href = "#";
  a.className = "citation";
  a.dataset.passageId = p.passage_id;
  a.textContent = `[${p.index}] ${p.source} [${p.start}:${p.end}]`;
  a.addEventListener("click", (ev) => { ev.preventDefault(); openPassage(p); });
  return a;
}

function showSources(msg, citations, context) {
  const box = document.createElement("div");
  box.className = "sources";
  const title = document.createElement("span");
  title.className = "role";
  const shown = citations.length ? citations : context;
  title.textContent = citations.length ? "sources" : (context.length ? "cites nothing; retrieved" : "");
  box.append(title, ...shown.map(sourceLink));
  msg.append(box);
}

async function openPassage(p) {
  $("passage-source").textContent = `[${p.index}] ${p.source}, characters ${p.start}-${p.end}`;
  $("passage-before").textContent = "";
  $("passage-text").textContent = p.quote;
  $("passage-after").textContent = "";
  $("passage").showModal();
  try {
    const r = await fetch("/v1/passages/" + encodeURIComponent(p.passage_id), { headers: headers() });
    if (!r.ok) return;  // the quote alone (already checked by the server) stays on show
    const j = await r.json();
    if (j.text !== p.quote) return;
    $("passage-before").textContent = (j.before.length ? "…" : "") + j.before;
    $("passage-after").textContent = j.after + (j.after.length ? "…" : "");
  } catch (e) { /* the quote is shown already */ }
}

$("passage-close").addEventListener("click", () => $("passage").close());

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("form").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("new").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("log").replaceChildren();
  $("status").textContent = "";
});
loadModel();
