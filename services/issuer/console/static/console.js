/* CloudNexus Developer Console: plain JavaScript, no build step, no dependencies.
 *
 * It calls the management API exactly as a script would: `Authorization: Bearer <admin key>`, the key
 * read from sessionStorage (this tab only; never a cookie, a URL or a log). Everything the API returns
 * is put on the page with textContent or attributes, never as HTML: key names are user input.
 * A secret (a new key, a webhook secret) lives in a read-only field until it is closed, and nowhere
 * else: reloading the page never shows it again.
 */
(function () {
  "use strict";

  var STORAGE_KEY = "cnx.console.admin-key";
  var PAGE_SIZE = 20;
  var PLACEHOLDER_KEY = "YOUR_API_KEY";
  var SVG_NS = "http://www.w3.org/2000/svg";

  var body = document.body;
  var apiUrl = body.getAttribute("data-api-url") || "";
  var graceHours = body.getAttribute("data-grace-hours") || "24";

  var state = {
    filters: { status: "", environment: "" },
    cursors: [null], // the cursor of each page seen so far; the last one is the current page's
    nextCursor: null,
    keys: [],
    rotateKey: null,
    revokeKey: null,
    detailsKey: null,
    opener: null,
  };

  function $(id) {
    return document.getElementById(id);
  }

  /* el("td", {class: "x"}, "text", child): an element; strings become text nodes. */
  function el(tag, attrs) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      node.setAttribute(name, value === true ? "" : String(value));
    });
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // ---- words -------------------------------------------------------------------------------------

  var STATUS_WORDS = { active: "Active", rotating: "Rotating", expired: "Expired", revoked: "Revoked" };

  function formatDate(iso) {
    if (!iso) return "Never";
    return new Date(iso).toLocaleDateString("en-US", { month: "short", day: "numeric", year: "numeric" });
  }

  function formatDateTime(iso) {
    if (!iso) return "Never";
    return new Date(iso).toLocaleString("en-US", {
      month: "short", day: "numeric", year: "numeric", hour: "2-digit", minute: "2-digit",
    });
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  /* "Never", "Just now", "2 mins ago", "3 hrs ago", "4 days ago", then the date. */
  function lastUsedWords(iso) {
    if (!iso) return "Never";
    var seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return "Just now";
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) return plural(minutes, "min", "mins") + " ago";
    var hours = Math.floor(minutes / 60);
    if (hours < 24) return plural(hours, "hr", "hrs") + " ago";
    var days = Math.floor(hours / 24);
    if (days < 30) return plural(days, "day", "days") + " ago";
    return formatDate(iso);
  }

  function statusWords(key) {
    var words = STATUS_WORDS[key.status] || key.status;
    if (key.status === "rotating" && key.grace_until) words += " until " + formatDateTime(key.grace_until);
    return words;
  }

  function keyIdText(key) {
    return key.prefix + "...";
  }

  // ---- the API -----------------------------------------------------------------------------------

  function ApiError(status, code, message, field) {
    this.status = status;
    this.code = code;
    this.message = message;
    this.field = field;
  }

  function sentence(text) {
    text = String(text || "").trim();
    if (!text) return "";
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  /* The API's own message, in a sentence that says what it means for the person. */
  function humanMessage(status, message) {
    var said = sentence(message);
    if (status === 401) return "This key was not accepted. " + said;
    if (status === 403) return "This key may not do that. " + said;
    if (status === 404) return "Not found. " + said;
    if (status === 429) return "Too many requests just now: wait a moment and try again. " + said;
    if (status === 503) return "The service is unavailable just now: try again shortly. " + said;
    if (status === 0) return said;
    return said || "The request failed (HTTP " + status + ").";
  }

  function api(method, path, payload, key) {
    var headers = { Authorization: "Bearer " + (key || sessionStorage.getItem(STORAGE_KEY) || ""), Accept: "application/json" };
    var init = { method: method, headers: headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    return fetch(path, init).then(
      function (response) {
        return response.text().then(function (text) {
          var data = null;
          try {
            data = text ? JSON.parse(text) : null;
          } catch (ignored) {
            data = null;
          }
          if (!response.ok) {
            var error = (data && data.error) || {};
            throw new ApiError(response.status, error.code || "error", humanMessage(response.status, error.message), error.field || null);
          }
          return data;
        });
      },
      function () {
        throw new ApiError(0, "network", "The server could not be reached. Check the connection and try again.", null);
      }
    );
  }

  function signedOutBy(error) {
    // The admin key stopped working (revoked, expired): back to the sign-in form, saying why.
    if (error && error.status === 401) {
      signOut(error.message);
      return true;
    }
    return false;
  }

  // ---- sign in / out -------------------------------------------------------------------------------

  function showConsole(signedIn) {
    $("signin").hidden = signedIn;
    $("console").hidden = !signedIn;
    $("sign-out").hidden = !signedIn;
  }

  function signIn(event) {
    event.preventDefault();
    var input = $("admin-key");
    var key = input.value.trim();
    var alert = $("signin-error");
    alert.textContent = "";
    if (!key) {
      alert.textContent = "Enter an admin key to sign in.";
      input.focus();
      return;
    }
    api("GET", "/v2/keys?limit=1", undefined, key).then(
      function () {
        sessionStorage.setItem(STORAGE_KEY, key);
        input.value = "";
        showConsole(true);
        resetPaging();
        loadKeys().then(function () {
          $("open-generate").focus();
        });
      },
      function (error) {
        alert.textContent = "Sign-in failed. " + error.message;
        input.focus();
        input.select();
      }
    );
  }

  function signOut(reason) {
    sessionStorage.removeItem(STORAGE_KEY);
    closeNewKey(false);
    closeWebhookSecret();
    document.querySelectorAll("dialog[open]").forEach(function (dialog) {
      dialog.close();
    });
    state.keys = [];
    clear($("keys-body"));
    $("page-status").textContent = "";
    showConsole(false);
    $("signin-error").textContent = typeof reason === "string" ? reason : "";
    $("admin-key").focus();
  }

  // ---- the key table -------------------------------------------------------------------------------

  function resetPaging() {
    state.cursors = [null];
    state.nextCursor = null;
  }

  function listPath() {
    var query = ["limit=" + PAGE_SIZE];
    if (state.filters.status) query.push("status=" + encodeURIComponent(state.filters.status));
    if (state.filters.environment) query.push("environment=" + encodeURIComponent(state.filters.environment));
    var cursor = state.cursors[state.cursors.length - 1];
    if (cursor) query.push("cursor=" + encodeURIComponent(cursor));
    return "/v2/keys?" + query.join("&");
  }

  function loadKeys() {
    return api("GET", listPath()).then(
      function (page) {
        state.keys = page.data || [];
        state.nextCursor = page.next_cursor || null;
        renderKeys();
      },
      function (error) {
        if (!signedOutBy(error)) say(error.message);
      }
    );
  }

  function say(text) {
    $("page-status").textContent = text;
  }

  function renderKeys() {
    var tbody = $("keys-body");
    var focused = document.activeElement && document.activeElement.getAttribute("data-focus");
    clear(tbody);
    state.keys.forEach(function (key) {
      tbody.appendChild(keyRow(key));
    });
    $("keys-empty").hidden = state.keys.length > 0;
    $("prev-page").disabled = state.cursors.length <= 1;
    $("next-page").disabled = !state.nextCursor;
    $("page-label").textContent = "Page " + state.cursors.length;
    if (focused) {
      var again = tbody.querySelector('[data-focus="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
  }

  function keyRow(key) {
    var actions = el("td", { "data-label": "Actions", class: "actions" });
    if (key.status === "active") {
      actions.appendChild(
        el("button", { type: "button", class: "button small", "aria-label": "Rotate " + key.name, "data-focus": "rotate:" + key.id }, "Rotate")
      );
      actions.lastChild.addEventListener("click", function () {
        openRotate(key);
      });
    }
    if (key.status !== "revoked") {
      actions.appendChild(
        el("button", { type: "button", class: "button small danger-outline", "aria-label": "Revoke " + key.name, "data-focus": "revoke:" + key.id }, "Revoke")
      );
      actions.lastChild.addEventListener("click", function () {
        openRevoke(key);
      });
    } else {
      actions.appendChild(el("span", { class: "muted" }, "None"));
    }
    var name = el("button", { type: "button", class: "link", "data-focus": "details:" + key.id, title: "Details of " + key.name }, key.name);
    name.addEventListener("click", function () {
      openDetails(key.id);
    });
    return el(
      "tr",
      { "data-key-id": key.id },
      el("td", { "data-label": "Key ID" }, el("code", null, keyIdText(key))),
      el("td", { "data-label": "Name" }, name, el("span", { class: "env-tag" }, key.environment)),
      el("td", { "data-label": "Last Used" }, el("time", { datetime: key.last_used_at || null, title: key.last_used_at ? formatDateTime(key.last_used_at) : null }, lastUsedWords(key.last_used_at))),
      el("td", { "data-label": "Status" }, el("span", { class: "badge " + key.status }, statusWords(key))),
      actions
    );
  }

  // ---- dialogs -------------------------------------------------------------------------------------

  function openDialog(dialog) {
    state.opener = document.activeElement;
    dialog.showModal();
  }

  function restoreFocus() {
    var opener = state.opener;
    state.opener = null;
    if (opener && opener.isConnected && !opener.disabled) {
      opener.focus();
    } else if (opener && opener.getAttribute && opener.getAttribute("data-focus")) {
      var again = document.querySelector('[data-focus="' + CSS.escape(opener.getAttribute("data-focus")) + '"]');
      (again || $("open-generate")).focus();
    }
  }

  function clearErrors(form) {
    form.querySelectorAll(".field-error").forEach(function (node) {
      node.textContent = "";
    });
    form.querySelectorAll("[aria-invalid]").forEach(function (node) {
      node.removeAttribute("aria-invalid");
    });
    form.querySelectorAll(".alert").forEach(function (node) {
      node.textContent = "";
    });
  }

  /* Put an API error next to the field it names, or at the top of the form. */
  function showError(form, error, fields) {
    var field = error.field || "";
    for (var i = 0; i < fields.length; i++) {
      var prefix = fields[i][0];
      if (field === prefix || field.indexOf(prefix + ".") === 0 || (prefix.slice(-1) === "*" && field.indexOf(prefix.slice(0, -1)) === 0)) {
        var target = $(fields[i][1]);
        var input = fields[i][2] ? $(fields[i][2]) : null;
        target.textContent = error.message;
        if (input) {
          input.setAttribute("aria-invalid", "true");
          input.focus();
        }
        return;
      }
    }
    var alert = form.querySelector(".alert");
    alert.textContent = error.message;
  }

  var GENERATE_FIELDS = [
    ["name", "err-name", "gen-name"],
    ["environment", "err-environment", "gen-environment"],
    ["scopes", "err-scopes", null],
    ["expires*", "err-expires", "gen-expires"],
    ["plan", "err-plan", "gen-plan"],
    ["rate_limit", "err-plan", "gen-plan"],
    ["ip_allowlist", "err-ip", "gen-ip"],
    ["notify.email", "err-email", "gen-email"],
    ["notify.webhook_url", "err-webhook", "gen-webhook"],
    ["notify", "err-email", "gen-email"],
    ["auto_renew", "err-ip", null],
  ];

  function lines(text) {
    return text
      .split(/\r?\n/)
      .map(function (line) {
        return line.trim();
      })
      .filter(Boolean);
  }

  function notifyFrom(email, webhook) {
    var notify = {};
    if (email) notify.email = email;
    if (webhook) notify.webhook_url = webhook;
    return Object.keys(notify).length ? notify : null;
  }

  function openGenerate() {
    var form = $("generate-form");
    clearErrors(form);
    openDialog($("generate-dialog"));
    $("gen-name").focus();
  }

  function submitGenerate(event) {
    event.preventDefault();
    var form = $("generate-form");
    clearErrors(form);
    var payload = {
      name: $("gen-name").value.trim(),
      environment: $("gen-environment").value,
      scopes: Array.prototype.map.call(form.querySelectorAll('input[name="scopes"]:checked'), function (box) {
        return box.value;
      }),
      ip_allowlist: lines($("gen-ip").value),
      auto_renew: $("gen-auto-renew").checked,
    };
    var days = $("gen-expires").value.trim();
    if (days) payload.expires_in_days = Number(days);
    if ($("gen-plan").value) payload.plan = $("gen-plan").value;
    var notify = notifyFrom($("gen-email").value.trim(), $("gen-webhook").value.trim());
    if (notify) payload.notify = notify;
    var submit = form.querySelector('button[type="submit"]');
    submit.disabled = true;
    api("POST", "/v2/keys", payload).then(
      function (created) {
        submit.disabled = false;
        form.reset();
        state.opener = null;
        $("generate-dialog").close();
        showNewKey(created, "Created " + created.name + ".");
        resetPaging();
        loadKeys();
      },
      function (error) {
        submit.disabled = false;
        if (!signedOutBy(error)) showError(form, error, GENERATE_FIELDS);
      }
    );
  }

  function openRotate(key) {
    state.rotateKey = key;
    var form = $("rotate-form");
    clearErrors(form);
    $("rotate-name").textContent = key.name;
    $("rotate-grace").value = graceHours;
    openDialog($("rotate-dialog"));
    $("rotate-grace").focus();
  }

  function submitRotate(event) {
    event.preventDefault();
    var form = $("rotate-form");
    clearErrors(form);
    var key = state.rotateKey;
    var grace = $("rotate-grace").value.trim();
    var payload = { key_id: key.id };
    if (grace !== "") payload.grace_period_hours = Number(grace);
    api("POST", "/v2/keys/rotate", payload).then(
      function (rotated) {
        state.opener = null;
        $("rotate-dialog").close();
        var until = rotated.previous && rotated.previous.grace_until;
        showNewKey(rotated, "Rotated " + key.name + ". The old key works until " + formatDateTime(until) + ".");
        resetPaging();
        loadKeys();
      },
      function (error) {
        if (!signedOutBy(error)) showError(form, error, [["grace_period_hours", "err-grace", "rotate-grace"]]);
      }
    );
  }

  function openRevoke(key) {
    state.revokeKey = key;
    clearErrors($("revoke-form"));
    $("revoke-name").textContent = key.name;
    openDialog($("revoke-dialog"));
  }

  function submitRevoke(event) {
    event.preventDefault();
    var form = $("revoke-form");
    var key = state.revokeKey;
    api("POST", "/v2/keys/" + encodeURIComponent(key.id) + "/revoke").then(
      function () {
        $("revoke-dialog").close();
        say("Revoked " + key.name + ".");
        loadKeys();
      },
      function (error) {
        if (!signedOutBy(error)) showError(form, error, []);
      }
    );
  }

  // ---- the secret, once ------------------------------------------------------------------------------

  function showNewKey(created, message) {
    $("new-key-name").textContent = created.name;
    $("new-key-value").value = created.key;
    $("new-key-created").textContent = formatDate(created.created_at);
    $("new-key-expires").textContent = formatDate(created.expires_at);
    var badge = $("new-key-status");
    badge.className = "badge " + created.status;
    badge.textContent = statusWords(created);
    var chips = $("new-key-scopes");
    clear(chips);
    created.scopes.forEach(function (scope) {
      chips.appendChild(el("code", { class: "chip" }, scope));
    });
    $("copy-status").textContent = "";
    $("new-key").hidden = false;
    renderExamples(created.key);
    say(message);
    $("new-key").focus();
  }

  function closeNewKey(focus) {
    $("new-key-value").value = "";
    $("new-key").hidden = true;
    renderExamples(null);
    if (focus !== false) $("open-generate").focus();
  }

  function copyFrom(input, status) {
    var value = input.value;
    function fallback() {
      input.focus();
      input.select();
      var copied = false;
      try {
        copied = document.execCommand("copy");
      } catch (ignored) {
        copied = false;
      }
      status.textContent = copied ? "Copied to the clipboard." : "Selected: press Ctrl+C (or Cmd+C) to copy.";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(function () {
        status.textContent = "Copied to the clipboard.";
      }, fallback);
    } else {
      fallback();
    }
  }

  function generateWebhookSecret() {
    api("POST", "/v2/account/webhook-secret").then(
      function (answer) {
        $("webhook-secret").value = answer.secret;
        $("webhook-secret-box").hidden = false;
        $("webhook-secret").focus();
        $("webhook-secret").select();
      },
      function (error) {
        if (!signedOutBy(error)) say(error.message);
      }
    );
  }

  function closeWebhookSecret() {
    $("webhook-secret").value = "";
    $("webhook-secret-box").hidden = true;
  }

  // ---- details, settings and the usage chart -----------------------------------------------------------

  var EDIT_FIELDS = [
    ["name", "err-edit-name", "edit-name"],
    ["ip_allowlist", "err-edit-ip", "edit-ip"],
    ["notify.email", "err-edit-email", "edit-email"],
    ["notify.webhook_url", "err-edit-webhook", "edit-webhook"],
    ["notify", "err-edit-email", "edit-email"],
  ];

  function openDetails(id) {
    Promise.all([api("GET", "/v2/keys/" + encodeURIComponent(id)), api("GET", "/v2/keys/" + encodeURIComponent(id) + "/usage?hours=24")]).then(
      function (answers) {
        state.detailsKey = answers[0];
        fillDetails(answers[0]);
        clearErrors($("edit-form"));
        $("edit-status").textContent = "";
        openDialog($("details-dialog"));
        drawUsage(answers[1].hours || []); // once open: the chart is drawn at the width it has
        $("details-title").focus();
      },
      function (error) {
        if (!signedOutBy(error)) say(error.message);
      }
    );
  }

  function fillDetails(key) {
    $("details-title").textContent = key.name;
    $("details-title").setAttribute("tabindex", "-1");
    var list = $("details-list");
    clear(list);
    var rate = key.rate_limit ? key.rate_limit.requests_per_minute.toLocaleString("en-US") + " / min, burst " + (key.rate_limit.burst === null || key.rate_limit.burst === undefined ? "none" : key.rate_limit.burst.toLocaleString("en-US")) : "The plan's";
    var rows = [
      ["Key ID", key.id],
      ["Prefix", keyIdText(key)],
      ["Environment", key.environment],
      ["Scopes", key.scopes.join(", ")],
      ["Plan", key.plan],
      ["Rate limit", rate],
      ["Created", formatDateTime(key.created_at)],
      ["Expires", formatDateTime(key.expires_at)],
      ["Last Used", lastUsedWords(key.last_used_at)],
      ["Status", statusWords(key)],
    ];
    rows.forEach(function (row) {
      list.appendChild(el("div", null, el("dt", null, row[0]), el("dd", null, row[1])));
    });
    $("edit-name").value = key.name;
    $("edit-ip").value = (key.ip_allowlist || []).join("\n");
    $("edit-auto-renew").checked = !!key.auto_renew;
    $("edit-email").value = (key.notify && key.notify.email) || "";
    $("edit-webhook").value = (key.notify && key.notify.webhook_url) || "";
  }

  function submitEdit(event) {
    event.preventDefault();
    var form = $("edit-form");
    clearErrors(form);
    $("edit-status").textContent = "";
    var key = state.detailsKey;
    var patch = {};
    var name = $("edit-name").value.trim();
    if (name !== key.name) patch.name = name;
    var ips = lines($("edit-ip").value);
    if (ips.join("\n") !== (key.ip_allowlist || []).join("\n")) patch.ip_allowlist = ips;
    if ($("edit-auto-renew").checked !== !!key.auto_renew) patch.auto_renew = $("edit-auto-renew").checked;
    var email = $("edit-email").value.trim();
    var webhook = $("edit-webhook").value.trim();
    var before = key.notify || {};
    if (email !== (before.email || "") || webhook !== (before.webhook_url || "")) patch.notify = notifyFrom(email, webhook);
    if (!Object.keys(patch).length) {
      $("edit-status").textContent = "Nothing changed.";
      return;
    }
    api("PATCH", "/v2/keys/" + encodeURIComponent(key.id), patch).then(
      function (updated) {
        state.detailsKey = updated;
        fillDetails(updated);
        $("edit-status").textContent = "Saved.";
        loadKeys();
      },
      function (error) {
        if (!signedOutBy(error)) showError(form, error, EDIT_FIELDS);
      }
    );
  }

  function hourLabel(iso) {
    var date = new Date(iso);
    return String(date.getHours()).padStart(2, "0") + ":00";
  }

  /* Validations per hour, allowed and refused stacked; the numbers are also in the table beside it
   * (visually hidden) and in the summary line, for screen readers and for anyone who wants figures. */
  function drawUsage(hours) {
    var allowedTotal = 0;
    var refusedTotal = 0;
    var peak = 0;
    hours.forEach(function (h) {
      allowedTotal += h.allowed;
      refusedTotal += h.refused;
      peak = Math.max(peak, h.allowed + h.refused);
    });
    $("usage-summary").textContent =
      "Last 24 hours: " + plural(allowedTotal, "allowed validation", "allowed validations") + ", " + refusedTotal + " refused.";

    var tbody = $("usage-table").querySelector("tbody");
    clear(tbody);
    hours.forEach(function (h) {
      tbody.appendChild(el("tr", null, el("td", null, formatDateTime(h.hour)), el("td", null, String(h.allowed)), el("td", null, String(h.refused))));
    });

    // Drawn in the holder's own pixels (no scaling), so the labels stay legible on a phone.
    var width = Math.max(280, Math.min(1200, $("usage-chart").clientWidth - 16 || 720));
    var height = 220, left = 40, right = 8, top = 12, bottom = 28;
    var plotW = width - left - right, plotH = height - top - bottom;
    var scaleMax = Math.max(1, niceMax(peak));
    var slot = plotW / Math.max(1, hours.length);
    var barW = Math.max(2, slot * 0.7);
    var chart = svg(
      "svg",
      { viewBox: "0 0 " + width + " " + height, role: "img", "aria-labelledby": "usage-svg-title usage-svg-desc", class: "usage-svg", width: width, height: height },
      svg("title", { id: "usage-svg-title" }, "Validations per hour, last 24 hours"),
      svg("desc", { id: "usage-svg-desc" }, allowedTotal + " allowed and " + refusedTotal + " refused in total; the busiest hour had " + peak + ".")
    );
    [0, 0.5, 1].forEach(function (fraction) {
      var y = top + plotH - plotH * fraction;
      chart.appendChild(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
      chart.appendChild(svg("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, String(Math.round(scaleMax * fraction))));
    });
    hours.forEach(function (h, i) {
      var x = left + i * slot + (slot - barW) / 2;
      var allowedH = (h.allowed / scaleMax) * plotH;
      var refusedH = (h.refused / scaleMax) * plotH;
      var base = top + plotH;
      var label = hourLabel(h.hour) + ": " + h.allowed + " allowed, " + h.refused + " refused";
      var group = svg("g", { class: "bar" }, svg("title", null, label));
      if (h.allowed) group.appendChild(svg("rect", { x: x, y: base - allowedH, width: barW, height: allowedH, class: "allowed" }));
      if (h.refused) group.appendChild(svg("rect", { x: x, y: base - allowedH - refusedH, width: barW, height: refusedH, class: "refused" }));
      chart.appendChild(group);
      var every = width < 500 ? 8 : 6;
      if (i % every === 0 || i === hours.length - 1) {
        chart.appendChild(svg("text", { x: x + barW / 2, y: height - 8, class: "axis", "text-anchor": "middle" }, hourLabel(h.hour)));
      }
    });
    var holder = $("usage-chart");
    clear(holder);
    holder.appendChild(chart);
  }

  function niceMax(value) {
    if (value <= 4) return 4;
    var magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * magnitude >= value) return steps[i] * magnitude;
    }
    return 10 * magnitude;
  }

  // ---- authentication examples ------------------------------------------------------------------------

  function renderExamples(key) {
    var k = key || PLACEHOLDER_KEY;
    var url = apiUrl + "/v2/instances";
    var examples = {
      curl: 'curl -X GET "' + url + '" \\\n  -H "Authorization: Bearer ' + k + '" \\\n  -H "Content-Type: application/json"',
      python:
        "import requests\n\napi_key = \"" + k + "\"\nheaders = {\n    \"Authorization\": f\"Bearer {api_key}\",\n    \"Content-Type\": \"application/json\"\n}\n\nresponse = requests.get(\"" + url + "\", headers=headers)\nprint(response.json())",
      node:
        "// Node 18+ has fetch built in; save as example.mjs for the top-level await.\nconst apiKey = '" + k + "';\nconst response = await fetch('" + url + "', {\n    headers: {\n        'Authorization': `Bearer ${apiKey}`,\n        'Content-Type': 'application/json'\n    }\n});\n\nconsole.log(await response.json());",
    };
    document.querySelectorAll("[data-example]").forEach(function (code) {
      code.textContent = examples[code.getAttribute("data-example")];
    });
  }

  function setupTabs() {
    var tabs = Array.prototype.slice.call(document.querySelectorAll('[role="tab"]'));
    function select(tab, focus) {
      tabs.forEach(function (other) {
        var selected = other === tab;
        other.setAttribute("aria-selected", selected ? "true" : "false");
        other.tabIndex = selected ? 0 : -1;
        $(other.getAttribute("aria-controls")).hidden = !selected;
      });
      if (focus) tab.focus();
    }
    tabs.forEach(function (tab, index) {
      tab.addEventListener("click", function () {
        select(tab, false);
      });
      tab.addEventListener("keydown", function (event) {
        var next = null;
        if (event.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
        else if (event.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
        else if (event.key === "Home") next = tabs[0];
        else if (event.key === "End") next = tabs[tabs.length - 1];
        if (next) {
          event.preventDefault();
          select(next, true);
        }
      });
    });
  }

  // ---- wiring --------------------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", function () {
      signOut("");
    });
    $("open-generate").addEventListener("click", openGenerate);
    $("generate-form").addEventListener("submit", submitGenerate);
    $("rotate-form").addEventListener("submit", submitRotate);
    $("revoke-form").addEventListener("submit", submitRevoke);
    $("edit-form").addEventListener("submit", submitEdit);
    $("copy-new-key").addEventListener("click", function () {
      copyFrom($("new-key-value"), $("copy-status"));
    });
    $("close-new-key").addEventListener("click", function () {
      closeNewKey(true);
    });
    $("generate-webhook").addEventListener("click", generateWebhookSecret);
    $("copy-webhook").addEventListener("click", function () {
      copyFrom($("webhook-secret"), $("webhook-copy-status"));
    });
    $("close-webhook").addEventListener("click", function () {
      closeWebhookSecret();
      $("generate-webhook").focus();
    });
    $("refresh").addEventListener("click", loadKeys);
    $("filter-status").addEventListener("change", function (event) {
      state.filters.status = event.target.value;
      resetPaging();
      loadKeys();
    });
    $("filter-environment").addEventListener("change", function (event) {
      state.filters.environment = event.target.value;
      resetPaging();
      loadKeys();
    });
    $("next-page").addEventListener("click", function () {
      if (!state.nextCursor) return;
      state.cursors.push(state.nextCursor);
      loadKeys().then(function () {
        ($("next-page").disabled ? $("prev-page") : $("next-page")).focus();
      });
    });
    $("prev-page").addEventListener("click", function () {
      if (state.cursors.length <= 1) return;
      state.cursors.pop();
      loadKeys().then(function () {
        ($("prev-page").disabled ? $("next-page") : $("prev-page")).focus();
      });
    });
    document.querySelectorAll("dialog").forEach(function (dialog) {
      dialog.addEventListener("close", restoreFocus);
      dialog.querySelectorAll("[data-close]").forEach(function (button) {
        button.addEventListener("click", function () {
          dialog.close();
        });
      });
    });
    setupTabs();
    renderExamples(null);
    // "Last Used" in words ages while the page is open; the table refreshes itself every 30 s, unless a
    // dialog is open (the person is busy there).
    window.setInterval(function () {
      if (!sessionStorage.getItem(STORAGE_KEY) || document.hidden || document.querySelector("dialog[open]")) return;
      loadKeys();
    }, 30000);

    if (sessionStorage.getItem(STORAGE_KEY)) {
      showConsole(true);
      loadKeys();
    } else {
      showConsole(false);
    }
  }

  start();
})();
