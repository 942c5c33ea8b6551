// The arena page: one prompt, two anonymous answers streamed side by side, a vote, then the names.
"use strict";
const $ = (id) => document.getElementById(id);
let battleId = null;

async function json(url, options) {
  const r = await fetch(url, options);
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error ? j.error.message : r.status + " " + r.statusText);
  return j;
}

function setVoting(on) {
  for (const b of document.querySelectorAll(".vote")) b.disabled = !on;
}

async function loadBoard() {
  const j = await json("/api/leaderboard");
  const body = $("board").querySelector("tbody");
  body.replaceChildren();
  j.rows.forEach((r, i) => {
    const tr = document.createElement("tr");
    for (const v of [i + 1, r.model, r.rating.toFixed(0), `${r.lower.toFixed(0)} – ${r.upper.toFixed(0)}`, r.votes]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    body.append(tr);
  });
  $("board-votes").textContent = `(${j.votes} votes)`;
  $("board").dataset.votes = j.votes;
}

async function battle(prompt, fromFile) {
  battleId = null;
  setVoting(false);
  $("go").disabled = true;
  for (const s of ["a", "b"]) {
    $("text-" + s).textContent = "";
    $("name-" + s).textContent = "";
    $("side-" + s).classList.remove("error");
    $("side-" + s).dataset.done = "false";
  }
  $("status").textContent = "generating…";
  document.body.dataset.state = "streaming";
  try {
    const r = await fetch("/api/battles", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, from_file: fromFile }),
    });
    let ready = false;
    await readEvents(r, (data) => {  // serve/static/sse.js
      const ev = JSON.parse(data);
      if (ev.battle_id) battleId = ev.battle_id;
      if (ev.text) $("text-" + ev.side).textContent += ev.text;
      if (ev.done) {
        $("side-" + ev.side).dataset.done = "true";
        if (ev.error) {
          $("side-" + ev.side).classList.add("error");
          $("text-" + ev.side).textContent += "\nerror: " + ev.error;
        }
      }
      if ("ready" in ev) ready = ev.ready;
    });
    $("status").textContent = ready ? "vote: which answer is better?" : "a model failed: this battle cannot be voted on";
    setVoting(ready);
    document.body.dataset.state = ready ? "voting" : "failed";
  } catch (e) {
    $("status").textContent = "error: " + e.message;
    document.body.dataset.state = "failed";
  } finally {
    $("go").disabled = false;
  }
}

async function vote(winner) {
  setVoting(false);
  try {
    const j = await json("/api/votes", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ battle_id: battleId, winner }),
    });
    $("name-a").textContent = j.model_a;  // the names, revealed only after the vote
    $("name-b").textContent = j.model_b;
    $("status").textContent = "thanks: your vote is in";
    document.body.dataset.state = "voted";
    await loadBoard();
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
}

let drawn = null;  // the prompt drawn from the file, while it is unedited
$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value;
  if (prompt.trim()) battle(prompt, prompt === drawn);
});
$("draw").addEventListener("click", async () => {
  const j = await json("/api/prompt");
  drawn = j.prompt;
  $("prompt").value = j.prompt;
});
for (const b of document.querySelectorAll(".vote")) b.addEventListener("click", () => vote(b.dataset.winner));

(async () => {
  try {
    const info = await json("/api/info");
    $("draw").hidden = info.prompts === 0;
    await loadBoard();
    document.body.dataset.ready = "true";
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
})();
