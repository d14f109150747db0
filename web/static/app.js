// Small behaviours htmx does not cover. Loaded as a file (no inline script), so the page can run under a strict CSP.
document.addEventListener("keydown", (event) => {
  // Enter sends the chat message; Shift+Enter adds a newline.
  const box = event.target;
  if (box.matches && box.matches("#message") && event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    box.form.requestSubmit();
  }
});

// Follow new chat content unless the person scrolled up to read.
let followChat = true;
document.addEventListener("scroll", (event) => {
  const log = event.target;
  if (log.id === "chat-log") followChat = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}, true);
document.addEventListener("htmx:wsAfterMessage", () => {
  const log = document.getElementById("chat-log");
  if (log && followChat) log.scrollTop = log.scrollHeight;
});
// After the chat form is swapped back in, keep typing where you were.
document.addEventListener("htmx:afterSwap", (event) => {
  if (event.target.id === "chat-form" || event.detail.elt.id === "chat-form") document.getElementById("message")?.focus();
});
