// Small behaviours htmx does not cover. Loaded as a file (no inline script), so the page runs under a strict CSP.

// Enter sends the chat message; Shift+Enter adds a newline; Enter that confirms an input method's composition
// (Japanese, Chinese, Korean) only confirms it. Escape while editing a todo puts it back unchanged.
document.addEventListener("keydown", (event) => {
  const field = event.target;
  const composing = event.isComposing || event.keyCode === 229;  // 229: Safari reports the confirming Enter so
  if (field.id === "message" && event.key === "Enter" && !event.shiftKey && !composing) {
    event.preventDefault();
    field.form.requestSubmit();
  }
  const editing = field.closest && field.closest(".todo.editing");
  if (editing && event.key === "Escape") {
    event.preventDefault();
    cancelEdit(editing);
  }
});

// Follow new chat content unless the person scrolled up to read; then offer "Jump to latest".
let followChat = true;
const chatLog = () => document.getElementById("chat-log");
const jumpButton = () => document.getElementById("jump-latest");

function atBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

// Where the log last scrolled itself to: its scroll event arrives a frame later, when new text may already have
// made it look scrolled up, and must not count as the person leaving the bottom.
let followedTo = null;

document.addEventListener("scroll", (event) => {
  if (event.target.id !== "chat-log") return;
  const ours = event.target.scrollTop === followedTo;
  followedTo = null;  // only that one event: the person's next scroll counts, wherever it ends
  if (ours) return;
  followChat = atBottom(event.target);
  if (followChat) jumpButton().hidden = true;
}, true);

// Once per frame, just before it is drawn, however many frames arrived: reading scrollHeight right after a token
// was appended made the browser lay the page out then and there, for every token (~2 ms in chromium here).
let followPending = false;
function followLog() {
  if (followPending) return;
  followPending = true;
  requestAnimationFrame(() => {
    followPending = false;
    const log = chatLog();
    if (!log) return;
    if (followChat) {
      log.scrollTop = log.scrollHeight;
      followedTo = log.scrollTop;
    } else if (!atBottom(log)) jumpButton().hidden = false;
  });
}

document.addEventListener("htmx:wsAfterMessage", followLog);

document.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  const row = button.closest("#todo-list .todo");
  if (row && button.classList.contains("edit")) {
    startEdit(row);
  } else if (row && button.classList.contains("cancel")) {
    cancelEdit(row);
  } else if (row && button.classList.contains("delete")) {
    htmx.ajax("DELETE", `/todos/${todoId(row)}`, { source: button, swap: "none" });
  } else if (button.id === "jump-latest") {
    const log = chatLog();
    log.scrollTop = log.scrollHeight;
    followChat = true;
    button.hidden = true;
  } else if (button.classList.contains("copy")) {
    copy(button, button.parentElement.querySelector("code").textContent);
  } else if (button.classList.contains("regenerate")) {
    const reply = button.closest(".msg.assistant");
    const values = { reply_id: reply.id.slice("reply-".length) };
    htmx.ajax("POST", "/chat/retry", { source: button, swap: "none", values });
  } else if (button.classList.contains("copy-reply")) {
    copy(button, button.closest(".msg").querySelector(".body").innerText);
  } else if (button.id === "show-todos" || button.id === "show-chat") {
    show(button.id === "show-chat" ? "chat" : "todos");
  } else if (button.id === "peek") {
    show("chat");
  }
});

function copy(button, text) {
  const label = button.textContent;
  navigator.clipboard.writeText(text).then(
    () => { button.textContent = "Copied"; },
    () => { button.textContent = "Copy failed"; },
  ).finally(() => setTimeout(() => { button.textContent = label; }, 2000));
}

// A phone shows one panel at a time (app.css). Comments that arrive while the list is shown are counted on the
// Chat button, and the newest peeks in under the list.
const phone = window.matchMedia("(max-width: 720px)");

function show(view) {
  document.querySelector(".app").dataset.view = view;
  document.getElementById("show-todos").setAttribute("aria-pressed", String(view === "todos"));
  document.getElementById("show-chat").setAttribute("aria-pressed", String(view === "chat"));
  if (view === "chat") {
    document.getElementById("unread").textContent = "";
    document.getElementById("peek").hidden = true;
    const log = chatLog();
    log.scrollTop = log.scrollHeight;
  }
}

function awayFromChat() {
  return phone.matches && document.querySelector(".app").dataset.view !== "chat";
}

const counted = new Set();  // replies already counted: a finished reply replaces its streaming bubble

new MutationObserver((changes) => {
  const added = changes.flatMap((c) => [...c.addedNodes])
    .filter((n) => n.classList && n.classList.contains("assistant") && !counted.has(n.id));
  added.forEach((n) => counted.add(n.id));  // (seen, when the chat is shown)
  if (!awayFromChat()) return;
  if (added.length) {
    const unread = document.getElementById("unread");
    unread.textContent = String(Number(unread.textContent || 0) + added.length);
  }
  const replies = chatLog().querySelectorAll(".msg.assistant .body");
  const newest = replies[replies.length - 1];
  if (newest && newest.textContent.trim()) {
    const peek = document.getElementById("peek");
    peek.textContent = "Assistant: " + newest.textContent.trim();
    peek.hidden = false;
  }
}).observe(document.querySelector(".panel.chat"), { childList: true, subtree: true, characterData: true });

// "Load earlier messages" adds messages above the one being read: keep that one where it was.
let fromBottom = null;
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.target.id === "load-earlier") fromBottom = chatLog().scrollHeight - chatLog().scrollTop;
});

// After a form is swapped back in, keep typing where you were.
document.addEventListener("htmx:afterSwap", (event) => {
  if (fromBottom !== null && event.detail.target.id === "load-earlier") {
    chatLog().scrollTop = chatLog().scrollHeight - fromBottom;
    fromBottom = null;
  }
  const form = event.detail.elt;
  if (form.id === "chat-form") document.getElementById("message").focus();
  if (form.id === "todo-form") document.getElementById("new-todo").focus();
});

// The todo list. Rows carry no htmx attributes: these handlers serve every row, by its id ("todo-12").
const todoId = (row) => row.id.slice("todo-".length);

// Editing, as in TodoMVC: Edit or a double-click opens one editor at a time; Enter or leaving the field saves,
// Escape or Cancel puts the row back. A change another tab makes to the row meanwhile waits until then (the
// row that comes back is the current one).
function startEdit(row) {
  document.querySelectorAll("#todo-list .todo.editing").forEach((other) => { if (other !== row) saveEdit(other); });
  htmx.ajax("GET", `/todos/${todoId(row)}/edit`, { source: row, target: row, swap: "outerHTML" });
}

function cancelEdit(row) {
  row.dataset.closing = "1";
  htmx.ajax("GET", `/todos/${todoId(row)}`, { source: row, target: row, swap: "outerHTML" });
}

function saveEdit(row) {
  // (The submit listener below marks the row as closing, so a blur after Enter does not submit again; an empty
  // title that the browser refuses to submit leaves the editor open and usable.)
  if (!row.dataset.closing) row.querySelector("form").requestSubmit();
}

// Safari and Firefox on macOS do not focus a clicked button, so leaving the field for Cancel would look like
// leaving the editor and save: pressing an editor's button keeps the focus in the field. Pressing Send keeps it
// in the message box too, to type the next one: moving it back after each message forced a layout of the whole
// page (2-8 ms in chromium here), just as the reply's first frames arrive.
document.addEventListener("pointerdown", (event) => {
  if (event.target.closest && event.target.closest("#todo-list .todo.editing button, #chat-form button.send")) {
    event.preventDefault();
  }
});

document.addEventListener("dblclick", (event) => {
  const row = event.target.closest && event.target.closest("#todo-list .todo:not(.editing)");
  if (row && event.target.classList.contains("title")) startEdit(row);
});

document.addEventListener("focusout", (event) => {
  const row = event.target.closest && event.target.closest("#todo-list .todo.editing");
  // Leaving the editor for somewhere outside it saves; moving to its own Save or Cancel does not.
  if (row && event.target.name === "title" && !(event.relatedTarget && row.contains(event.relatedTarget))) {
    saveEdit(row);
  }
});

document.addEventListener("submit", (event) => {
  const row = event.target.closest("#todo-list .todo.editing");
  if (row) row.dataset.closing = "1";  // Enter or Save: the blur that follows must not submit again
}, true);

// After a row is swapped (saved, put back, or replaced by another tab's change), focus stays on that row: on the
// control it was on, else its Edit button; a deleted row hands focus to the next one.
let focusedControl = null;
document.addEventListener("htmx:beforeSwap", (event) => {
  const target = event.detail.target;
  focusedControl = target && target.classList && target.classList.contains("todo") && target.contains(document.activeElement)
    ? { id: target.id, kind: controlKind(document.activeElement) } : null;
});
document.addEventListener("htmx:afterSettle", () => {  // (after htmx's own focus handling, which runs on swap)
  // Only focus that the swap dropped is put back: not focus the person has since moved (to another editor, say).
  if (!focusedControl || (document.activeElement && document.activeElement !== document.body)) {
    focusedControl = null;
    return;
  }
  const row = document.getElementById(focusedControl.id);
  if (row) focusRow(row, focusedControl.kind);
  focusedControl = null;
});

function controlKind(element) {
  if (element.type === "checkbox") return "toggle";
  return ["edit", "delete"].find((kind) => element.classList.contains(kind)) || "edit";
}

function focusRow(row, kind) {
  if (row.classList.contains("editing")) return;  // its autofocus input takes it
  const control = kind === "toggle" ? row.querySelector("input[type=checkbox]") : row.querySelector(`.${kind}`) ||
    row.querySelector(".edit");
  if (control) control.focus({ preventScroll: true });
}

// A todo deleted while someone edits or looks at it: the editor's save answers 404; drop the row.
document.addEventListener("htmx:responseError", (event) => {
  const row = event.detail.target && event.detail.target.closest && event.detail.target.closest(".todo");
  if (row && event.detail.xhr.status === 404) {
    focusNext(row);
    row.remove();
  }
});

function focusNext(row) {
  const rows = [...document.querySelectorAll("#todo-list .todo")];
  const next = rows[rows.indexOf(row) + 1] || rows[rows.indexOf(row) - 1];
  if (next) focusRow(next, "toggle");
  else document.getElementById("new-todo").focus();
}

// A todo this tab adds is scrolled into view and flagged when its row arrives (the list may be long).
let addedHere = false;  // set when the form is sent: the row's frame can arrive before the POST's answer
document.addEventListener("htmx:beforeRequest", (event) => {
  if (event.detail.elt.id === "todo-form") addedHere = true;
});
document.addEventListener("htmx:afterRequest", (event) => {
  if (event.detail.elt.id === "todo-form" && !event.detail.successful) addedHere = false;
});

document.addEventListener("change", (event) => {
  const box = event.target;
  const row = box.type === "checkbox" && box.closest("#todo-list .todo");
  if (row) htmx.ajax("POST", `/todos/${todoId(row)}/toggle`, { source: box, swap: "none" });
});

// A change from any tab arrives in #todo-inbox: the row it touched (or a note that it is gone, or that every
// completed one was cleared). Each is put where this tab's view wants it: in its section, in id order, or
// nowhere if the view's filter leaves it out. A row beyond the pages loaded so far goes after the "Show more"
// control, so it is seen at once; when that page loads, it brings the row again and the older copy is dropped.
function placeTodo(item, list) {
  if (item.classList.contains("cleared")) {
    list.querySelectorAll(".todo.done, #done-list > .more:not(.show-done)").forEach((row) => row.remove());
    item.remove();
    return;
  }
  const old = list.querySelector(`#${item.id || item.dataset.todo}`);
  if (old && old.classList.contains("editing") && !item.classList.contains("gone")) {
    item.remove();  // not under the person's cursor: the row that comes back when they save or cancel is current
    return;
  }
  const hadFocus = old && old.contains(document.activeElement) ? controlKind(document.activeElement) : null;
  const done = item.classList.contains("done");
  const section = done ? document.getElementById("done-list") : list.dataset.filter !== "completed" && list;
  if (item.classList.contains("gone") || !section) {  // deleted, or out of this view: focus moves on
    if (hadFocus) focusNext(old);
    if (old) old.remove();
    item.remove();
    return;
  }
  // A row that moves to the other section (ticked off: to the completed ones at the end) is not followed there,
  // which would scroll the list away: focus goes to the row that took its place, as after a delete.
  const moved = old && old.parentElement !== section;
  if (hadFocus && moved) focusNext(old);
  if (old) old.remove();
  const id = Number(todoId(item));
  const next = [...section.children].find((row) => row.classList.contains("todo") && Number(todoId(row)) > id);
  section.insertBefore(item, next || (done ? null : document.getElementById("done-section")));
  if (hadFocus && !moved) focusRow(item, hadFocus);
  if (!old && addedHere) {
    addedHere = false;
    item.classList.add("new");
    item.scrollIntoView({ block: "nearest" });
  }
}

function showCounts() {
  const footer = document.getElementById("todo-footer");
  if (!footer) return;
  const done = Number(footer.dataset.done);
  document.querySelectorAll(".done-count").forEach((count) => { count.textContent = done.toLocaleString("en-US"); });
  document.querySelectorAll(".show-done").forEach((control) => { control.hidden = done === 0; });
}

document.addEventListener("htmx:wsAfterMessage", () => {
  const inbox = document.getElementById("todo-inbox");
  const list = document.getElementById("todo-list");
  // Most frames are tokens: nothing to do here. Every change to the list comes with a row (or a note) in the
  // inbox and the footer's new counts; a resync brings its counts already rendered.
  if (!inbox || !list || !inbox.children.length) return;
  for (const item of [...inbox.children]) placeTodo(item, list);
  showCounts();
});

function loadedThrough() {
  // A section's "Show more" names the last row loaded (rows after it arrived live); without one, all of it is.
  const through = (section) => {
    if (!section || section.querySelector(":scope > .show-done")) return 0;  // none, or completed still collapsed
    const more = section.querySelector(":scope > .more:not(.show-done)");
    const rows = section.querySelectorAll(":scope > .todo");
    return more ? Number(more.dataset.after) : rows.length ? Number(todoId(rows[rows.length - 1])) : 0;
  };
  const open = through(document.getElementById("todo-list"));
  const done = through(document.getElementById("done-list"));
  return (open ? `&open_to=${open}` : "") + (done ? `&done_to=${done}` : "");
}

// After a page of a section loads, a row that arrived live before it (see placeTodo) is there twice: keep the
// first, which is in id order.
document.addEventListener("htmx:afterSwap", () => {
  const seen = new Set();
  document.querySelectorAll("#todo-list .todo").forEach((row) => {
    if (seen.has(row.id)) row.remove();
    else seen.add(row.id);
  });
});

// The web closes a tab's WebSocket with 1008 when its session has ended (the access token was rotated: see
// web/auth.py). Reloading shows the token page, instead of a page that silently stopped updating.
document.addEventListener("htmx:wsClose", (event) => {
  if (event.detail.event.code === 1008) location.reload();
});

// A finished reply replaces its streaming bubble: a thinking disclosure the person opened meanwhile stays open.
document.addEventListener("htmx:oobBeforeSwap", (event) => {
  const target = event.detail.target;
  const opened = target.matches && target.matches(".msg.assistant") && target.querySelector("details.thinking[open]");
  const replacement = opened && event.detail.fragment.querySelector("details.thinking");
  if (replacement) replacement.open = true;
});
