// Typeset the maths pymdownx.arithmatex (generic mode) leaves in the page: \( \) inline inside
// <span class="arithmatex">, \[ \] display inside <div class="arithmatex">. KaTeX is vendored under
// docs/vendor/katex, so the site needs no network. A formula KaTeX cannot parse is shown in red with
// its source (throwOnError: false) rather than dropped.
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.dataset.katex) return;
      var tex = el.textContent.trim();
      var display = el.tagName === "DIV";
      if (/^\\\(/.test(tex) || /^\\\[/.test(tex)) tex = tex.slice(2, -2);
      katex.render(tex, el, { displayMode: display, throwOnError: false });
      el.dataset.katex = "1";
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { typeset(document); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document); });
  }
})();
