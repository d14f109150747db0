// Small behaviours htmx does not cover. Loaded as a file (no inline script), so the page runs under a strict CSP.

// Enter sends the chat message; Shift+Enter adds a newline. Escape while editing a todo puts it back unchanged.
document.addEventListener("keydown", (event) => {
  const field = event.target;
  if (field.id === "message" && event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    field.form.requestSubmit();
  }
  const editing = field.closest && field.closest(".todo.editing");
  if (editing && event.key === "Escape") {
    event.preventDefault();
    htmx.ajax("GET", "/todos/" + editing.id.replace("todo-", ""), { target: editing, swap: "outerHTML" });
  }
});

// Follow new chat content unless the person scrolled up to read; then offer "Jump to latest".
let followChat = true;
const chatLog = () => document.getElementById("chat-log");
const jumpButton = () => document.getElementById("jump-latest");

function atBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

document.addEventListener("scroll", (event) => {
  if (event.target.id !== "chat-log") return;
  followChat = atBottom(event.target);
  if (followChat) jumpButton().hidden = true;
}, true);

document.addEventListener("htmx:wsAfterMessage", () => {
  const log = chatLog();
  if (!log) return;
  if (followChat) log.scrollTop = log.scrollHeight;
  else if (!atBottom(log)) jumpButton().hidden = false;
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.id === "jump-latest") {
    const log = chatLog();
    log.scrollTop = log.scrollHeight;
    followChat = true;
    button.hidden = true;
  } else if (button.classList.contains("copy")) {
    const code = button.parentElement.querySelector("code");
    navigator.clipboard.writeText(code.textContent).then(
      () => { button.textContent = "Copied"; },
      () => { button.textContent = "Copy failed"; },
    );
  }
});

// After a form is swapped back in, keep typing where you were.
document.addEventListener("htmx:afterSwap", (event) => {
  const form = event.detail.elt;
  if (form.id === "chat-form") document.getElementById("message").focus();
  if (form.id === "todo-form") document.getElementById("new-todo").focus();
});
