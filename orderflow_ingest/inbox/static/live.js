/* orderflow inbox: say when new mail arrived. Polls the inbox's /newest every few seconds
   (data-seconds) and shows "N new messages — show", a plain link that reloads the list. No
   library, no inline code (the CSP allows this file by nonce only); without JavaScript the
   page is the same, minus this line. Stops when the session is gone. */
(function () {
  "use strict";
  var box = document.getElementById("live");
  if (!box || !window.fetch) {
    return;
  }
  var every = (Number(box.getAttribute("data-seconds")) || 15) * 1000;
  var stopped = false;

  function show(count, more) {
    var link = box.querySelector("a");
    if (!link) {
      link = document.createElement("a");
      link.href = box.getAttribute("data-show");
      box.appendChild(link);
    }
    var words = count === 1 && !more ? " new message" : " new messages";
    link.textContent = count + (more ? "+" : "") + words + " \u2014 show";
  }

  function poll() {
    if (document.hidden) {
      schedule();
      return;
    }
    fetch(box.getAttribute("data-url"), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      redirect: "manual"
    }).then(function (response) {
      var type = response.headers.get("content-type") || "";
      if (!response.ok || type.indexOf("application/json") !== 0) {
        stopped = true; /* signed out (a redirect) or refused: the page still works */
        return null;
      }
      return response.json();
    }).then(function (data) {
      if (data && data["new"] > 0) {
        show(data["new"], data.more);
      }
      schedule();
    }, function () {
      schedule(); /* offline for a moment: try again later */
    });
  }

  function schedule() {
    if (!stopped) {
      window.setTimeout(poll, every);
    }
  }

  schedule();
})();
