// Server-sent events over fetch(), shared by the chat page and the arena page (the arena serves this file
// too): on a non-2xx answer, throw the server's error message; else call onData(text) for every `data:` line
// as it arrives (one event is a blank-line-terminated block).
"use strict";

async function readEvents(r, onData) {
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    throw new Error(j.error ? j.error.message : r.status + " " + r.statusText);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) onData(line.slice(6));
      }
    }
  }
}
