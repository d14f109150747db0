// The tab's WebSocket as the chat uses it: what the page sends up it, and the frames it handles before htmx (the
// ones on the path of a reply's first token). Every other frame is HTML for htmx. Loaded after app.js (chatLog,
// followLog, loadedThrough).

let tabSocket = null;
const openSocket = htmx.createWebSocket;
// A reconnect resyncs what this tab shows: its URL names the last row loaded in each section, so pages loaded with
// "Show more" come back too (web/todos.py, view_of).
htmx.createWebSocket = (url) => (tabSocket = openSocket(url + loadedThrough()));

// A token frame is the marker and the bare text of the reply streaming now (one streams at a time; see
// web/relay.py). It never reaches htmx: the text is appended as a text node, never parsed as HTML.
const TOKEN_FRAME = "\u0002";  // components.TOKEN_FRAME
document.addEventListener("htmx:wsBeforeMessage", (event) => {
  const message = event.detail.message;
  if (typeof message !== "string" || !message.startsWith(TOKEN_FRAME)) return;
  event.preventDefault();
  const bodies = document.querySelectorAll("#chat-log .body.streaming");
  const body = bodies[bodies.length - 1];
  if (body) body.append(message.slice(TOKEN_FRAME.length));
  followLog();
});

// A frame that only appends to the chat (your message, a reply's bubble with its first words, a note) is appended
// here: htmx parses every frame as a whole new document and goes through its swap's events, 1.3-1.9 ms of the main
// thread per frame in chromium here (0.4 ms this way), and a reply's first token waited behind your message's. A
// frame that also carries anything else is htmx's.
const APPEND_TO_CHAT = '<div hx-swap-oob="beforeend:#chat-log">';  // components.oob(..., target="chat-log")
const HTMX_ATTRIBUTE = /\s(data-)?(hx|ws|sse)-[a-z]/;
const parsed = document.createElement("template");
document.addEventListener("htmx:wsBeforeMessage", (event) => {
  const message = event.detail.message;
  if (typeof message !== "string" || !message.startsWith(APPEND_TO_CHAT)) return;
  const log = chatLog();
  parsed.innerHTML = message;
  const wrappers = parsed.content.children;
  if (log && wrappers.length === 1 && parsed.content.childNodes.length === 1) {
    event.preventDefault();
    const added = [...wrappers[0].children];
    log.append(...wrappers[0].childNodes);
    // Only what has htmx attributes needs htmx (nothing appended to the log has any today).
    if (HTMX_ATTRIBUTE.test(message.slice(APPEND_TO_CHAT.length))) added.forEach((element) => htmx.process(element));
    followLog();
  }
  parsed.content.replaceChildren();  // (not kept alive until the next frame)
});

// A chat message goes up the tab's WebSocket (see ChatForm), sent from here: htmx's ws-send took 1.3-1.8 ms of the
// main thread from the click to the frame leaving (it gathers the form as for any request: validation events, its
// attribute inheritance, headers), on the path of the reply's first token. The web reads only `text`.
// While the socket reconnects (a restart of the web, a network blip) the message is not queued unseen, to go out
// whenever the socket opens, perhaps twice: it stays in the box, and the form says why. Only while the page first
// connects, a few milliseconds, is it queued; should that first connection fail, it comes back to the box too.
let firstConnect = true;  // until the page's first socket opens or closes
const firstQueue = [];  // the texts sent meanwhile

function connected(open) {
  if (firstConnect) {
    firstConnect = false;
    const queued = firstQueue.splice(0);
    if (open) queued.forEach((text) => tabSocket.send(chatFrame(text)));
    else if (queued.length) giveBack(queued);
  }
  document.body.toggleAttribute("data-offline", !open);  // (for a test to wait on, and for styles)
  // The status line says so: it comes from the web, and would go on saying "ready". The resync a reconnect brings
  // puts the web's own status back.
  const state = document.getElementById("llm-state");
  if (!open && state) {
    state.textContent = "Not connected to the app: reconnecting…";
    state.className = "state offline";
  }
}
document.addEventListener("htmx:wsOpen", () => connected(true));
document.addEventListener("htmx:wsClose", () => connected(false));

const chatFrame = (text) => JSON.stringify({ text });

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.id !== "chat-form") return;
  event.preventDefault();  // (without this script, the form is a plain POST to /chat)
  const message = form.elements.text;
  if (tabSocket && tabSocket.readyState === WebSocket.OPEN) {
    tabSocket.send(chatFrame(message.value));
  } else if (firstConnect) {
    firstQueue.push(message.value);
  } else {
    notConnected(form);
    return;
  }
  // Cleared here; should the web refuse it, the form comes back with the text and why. Not form.reset(): a form
  // that came back refused has the refused text as its default, and would show it again.
  if (message.defaultValue) message.defaultValue = "";
  message.value = "";
  const error = form.querySelector(".error");
  if (error) error.remove();
  if (document.activeElement !== message) message.focus();  // (Send reached by keyboard)
});

function giveBack(texts) {
  const form = document.getElementById("chat-form");
  const message = form.elements.text;
  message.value = [...texts, message.value].filter(Boolean).join("\n\n");
  notConnected(form);
}

function notConnected(form) {
  let error = form.querySelector(".error");
  if (!error) {
    error = document.createElement("p");
    error.className = "error";
    error.setAttribute("role", "alert");
    form.append(error);
  }
  error.textContent = "Not connected to the app just now: your message is still here. Send it again in a moment.";
}
