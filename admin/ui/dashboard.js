// The balancer's dashboard: reads /v1 every second and draws each service
// with its backends; an admin account gets buttons that change a backend
// through /v1, each change conditional on the ETag just read (If-Match).
"use strict";

(() => {
  const PERIOD_MS = 1000;
  const SAMPLES = 180; // 3 minutes of one-second rates
  const SVG = "http://www.w3.org/2000/svg";
  const account = document.documentElement.dataset.account || "basic";
  const canAct = account === "admin";

  // /v1/ next to /ui/, without the credentials a URL may carry (fetch refuses those).
  const apiBase = (() => {
    const base = new URL("../v1/", location.href);
    base.username = "";
    base.password = "";
    base.search = "";
    base.hash = "";
    return base;
  })();
  const apiUrl = (path) => new URL(path, apiBase).href;

  const rates = new Map(); // service id -> {last: {rx, tx, at}, rx: [], tx: []}
  const cards = new Map(); // service id -> its elements
  let pollFailed = false;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function bytes(count) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = count;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
  }

  function ago(stamp) {
    if (!stamp) return "—";
    const seconds = Math.max(0, (Date.now() - Date.parse(stamp)) / 1000);
    if (seconds < 60) return `${seconds.toFixed(0)} s ago`;
    if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min ago`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
    return `${(seconds / 86400).toFixed(1)} d ago`;
  }

  function showMessage(text, kind) {
    const message = document.getElementById("message");
    message.textContent = text;
    message.className = kind || "";
    message.hidden = !text;
  }

  async function problem(response) {
    try {
      const body = await response.json();
      if (body && Array.isArray(body.errors)) return body.errors.map((e) => e.detail).join("; ");
      if (typeof body === "string") return body;
    } catch (ignored) {
      // not JSON: the status says enough
    }
    return `${response.status} ${response.statusText}`;
  }

  async function getJson(path) {
    const response = await fetch(apiUrl(path), { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) throw new Error(`GET /v1/${path}: ${await problem(response)}`);
    return response.json();
  }

  // --- charts --------------------------------------------------------------

  function sample(service, now) {
    const stats = service.attributes.statistics;
    let entry = rates.get(service.id);
    if (!entry) {
      entry = { last: null, rx: [], tx: [] };
      rates.set(service.id, entry);
    }
    if (entry.last) {
      const seconds = Math.max(now - entry.last.at, 0.001);
      entry.rx.push(Math.max(0, stats.rx - entry.last.rx) / seconds);
      entry.tx.push(Math.max(0, stats.tx - entry.last.tx) / seconds);
      if (entry.rx.length > SAMPLES) entry.rx.shift();
      if (entry.tx.length > SAMPLES) entry.tx.shift();
    }
    entry.last = { rx: stats.rx, tx: stats.tx, at: now };
    return entry;
  }

  function points(values, top) {
    const width = 300;
    const height = 50;
    const start = SAMPLES - values.length;
    return values
      .map((v, i) => `${(((start + i) / (SAMPLES - 1)) * width).toFixed(1)},${(height - (v / top) * (height - 2) - 1).toFixed(1)}`)
      .join(" ");
  }

  function chart() {
    const box = element("div", "chart");
    const label = element("div", "label");
    const rx = element("span", "rx-text", "rx —");
    const tx = element("span", "tx-text", "tx —");
    label.append(rx, " · ", tx, " ");
    const peak = element("span", "muted");
    label.append(peak);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 300 50");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const rxLine = document.createElementNS(SVG, "polyline");
    rxLine.setAttribute("class", "rx");
    const txLine = document.createElementNS(SVG, "polyline");
    txLine.setAttribute("class", "tx");
    svg.append(rxLine, txLine);
    box.append(label, svg);
    return { box, rx, tx, peak, svg, rxLine, txLine };
  }

  function drawChart(parts, entry) {
    const rx = entry.rx.length ? entry.rx[entry.rx.length - 1] : 0;
    const tx = entry.tx.length ? entry.tx[entry.tx.length - 1] : 0;
    setText(parts.rx, `rx ${bytes(rx)}/s`);
    setText(parts.tx, `tx ${bytes(tx)}/s`);
    const top = Math.max(1, ...entry.rx, ...entry.tx);
    setText(parts.peak, `(peak ${bytes(top)}/s)`);
    parts.svg.setAttribute("aria-label", `rx and tx per second over the last ${SAMPLES} seconds, peak ${bytes(top)}/s`);
    parts.rxLine.setAttribute("points", points(entry.rx, top));
    parts.txLine.setAttribute("points", points(entry.tx, top));
  }

  // --- service cards ----------------------------------------------------------

  function figure(label, key) {
    const box = element("div", "figure");
    box.dataset.figure = key;
    const value = element("div", "value", "—");
    box.append(value, element("div", "label", label));
    return { box, value };
  }

  function card(id) {
    const section = element("section", "service");
    section.dataset.service = id;
    const title = element("div", "title");
    const name = element("h2", "", id);
    const state = element("span", "muted");
    const listener = element("span", "muted");
    const strategy = element("span", "muted");
    title.append(name, state, listener, strategy);
    const figures = element("div", "figures");
    const connections = figure("active connections", "connections");
    const total = figure("connections in all", "total");
    const refusals = figure("refusals", "refusals");
    const moved = figure("bytes rx / tx", "bytes");
    figures.append(connections.box, total.box, refusals.box, moved.box);
    const charts = element("div", "charts");
    const traffic = chart();
    charts.append(traffic.box);
    const wrapper = element("div", "table");
    const table = element("table");
    const head = element("thead");
    const headRow = element("tr");
    const columns = ["Server", "State", "Health check", "Changed", "Origin", "Weight", "Conns", "Rx", "Tx"];
    if (canAct) columns.push("Actions");
    for (const column of columns) headRow.append(element("th", "", column));
    head.append(headRow);
    const body = element("tbody");
    table.append(head, body);
    wrapper.append(table);
    section.append(title, figures, charts, wrapper);
    return { section, state, listener, strategy, connections, total, refusals, moved, traffic, body, rows: new Map() };
  }

  function origin(server, service) {
    if (server.attributes.origin === "api") return "created";
    const discovery = service.attributes.parameters.discovery || {};
    return discovery.kind === "static" ? "static" : `discovered (${discovery.kind || "?"})`;
  }

  function button(label, action) {
    const node = element("button", "", label);
    node.type = "button";
    node.addEventListener("click", async () => {
      node.disabled = true;
      try {
        await action();
      } catch (error) {
        showMessage(error.message);
      } finally {
        node.disabled = false;
      }
    });
    return node;
  }

  function row(id) {
    const tr = element("tr");
    tr.dataset.server = id;
    const cells = {};
    for (const name of ["server", "state", "check", "changed", "origin", "weight", "connections", "rx", "tx"]) {
      cells[name] = element("td", ["weight", "connections", "rx", "tx"].includes(name) ? "number" : "");
      tr.append(cells[name]);
    }
    setText(cells.server, id);
    cells.badge = element("span", "state");
    cells.state.append(cells.badge);
    if (canAct) {
      const actions = element("td");
      const box = element("div", "actions");
      const weight = element("input", "weight");
      weight.type = "number";
      weight.min = "0";
      weight.setAttribute("aria-label", `weight of ${id}`);
      box.append(
        button("Maintenance", () => change(id, "set", "maintenance")),
        button("Drain", () => change(id, "set", "drain")),
        button("Clear", () => change(id, "clear")),
        weight,
        button("Set weight", async () => {
          await change(id, "weight", weight.value);
          weight.value = "";
        }),
      );
      actions.append(box);
      tr.append(actions);
      cells.weightInput = weight;
    }
    return { tr, cells };
  }

  function drawRow(parts, server, service) {
    const a = server.attributes;
    const cells = parts.cells;
    setText(cells.badge, a.state);
    cells.badge.className = `state ${a.state}`;
    const check = a.last_check;
    setText(cells.check, check ? `${check.outcome} (${check.failures}/${check.checks} failed)` : "—");
    cells.check.className = check ? `check-${check.outcome}` : "";
    cells.check.title = check ? `latest check ${check.at}, ${(check.duration * 1000).toFixed(1)} ms` : "no check yet";
    setText(cells.changed, ago(a.state_changed_at));
    cells.changed.title = a.state_changed_at || "not turned live or down by the checks since they began";
    setText(cells.origin, origin(server, service));
    const weight = a.parameters.weight === undefined ? "—" : String(a.parameters.weight);
    setText(cells.weight, weight);
    if (cells.weightInput) cells.weightInput.placeholder = weight;
    setText(cells.connections, String(a.statistics.connections));
    setText(cells.rx, bytes(a.statistics.rx));
    setText(cells.tx, bytes(a.statistics.tx));
  }

  function drawService(service, servers, now) {
    let parts = cards.get(service.id);
    if (!parts) {
      parts = card(service.id);
      cards.set(service.id, parts);
    }
    const a = service.attributes;
    const s = a.statistics;
    setText(parts.state, a.state);
    setText(parts.listener, `listener ${a.parameters.bind} (${a.protocol}) on ${a.listening_on}`);
    setText(parts.strategy, `strategy ${a.router}`);
    setText(parts.connections.value, String(s.connections));
    setText(parts.total.value, String(s.total_connections));
    setText(parts.refusals.value, String(s.over_limit + s.no_backend + s.denied));
    parts.refusals.box.title = `over a limit ${s.over_limit}, no backend ${s.no_backend}, denied ${s.denied}`;
    setText(parts.moved.value, `${bytes(s.rx)} / ${bytes(s.tx)}`);
    drawChart(parts.traffic, sample(service, now));
    const ids = service.relationships.servers.data.map((link) => link.id);
    for (const [id, known] of parts.rows) {
      if (!ids.includes(id)) {
        known.tr.remove();
        parts.rows.delete(id);
      }
    }
    for (const id of ids) {
      const server = servers.get(id);
      if (!server) continue;
      let known = parts.rows.get(id);
      if (!known) {
        known = row(id);
        parts.rows.set(id, known);
      }
      drawRow(known, server, service);
      parts.body.append(known.tr); // keeps the pool's order
    }
    return parts.section;
  }

  function draw(services, servers) {
    const now = performance.now() / 1000;
    const byId = new Map(servers.map((server) => [server.id, server]));
    const main = document.getElementById("services");
    const sections = services.map((service) => drawService(service, byId, now));
    for (const [id, parts] of cards) {
      if (!services.some((service) => service.id === id)) {
        cards.delete(id);
        rates.delete(id);
        parts.section.remove();
      }
    }
    if (!sections.length) {
      main.replaceChildren(element("p", "muted", "No service configured."));
      return;
    }
    const stale = [...main.children].filter((child) => !sections.includes(child));
    for (const child of stale) child.remove();
    for (const section of sections) main.append(section);
  }

  // --- changes ---------------------------------------------------------------------

  async function change(id, what, value) {
    const member = `servers/${encodeURIComponent(id)}`;
    const read = await fetch(apiUrl(member), { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!read.ok) throw new Error(`${id}: ${await problem(read)}`);
    const tag = read.headers.get("ETag");
    const headers = { Accept: "application/json" };
    if (tag) headers["If-Match"] = tag;
    let path = member;
    let init;
    let done;
    if (what === "set") {
      path = `${member}/set?state=${value}`;
      init = { method: "PUT", headers };
      done = `${id}: ${value} set`;
    } else if (what === "clear") {
      path = `${member}/clear`;
      init = { method: "PUT", headers };
      done = `${id}: cleared`;
    } else {
      const weight = Number(value);
      if (value === "" || !Number.isInteger(weight) || weight < 0) {
        throw new Error(`${id}: the weight must be a whole number from 0, got "${value}"`);
      }
      headers["Content-Type"] = "application/json";
      headers.Prefer = "return=representation";
      const body = { data: { id, type: "servers", attributes: { parameters: { weight } } } };
      init = { method: "PATCH", headers, body: JSON.stringify(body) };
      done = `${id}: weight ${weight}`;
    }
    const response = await fetch(apiUrl(path), { ...init, cache: "no-store" });
    if (response.status === 412) {
      throw new Error(`${id} changed since it was read (another operator?): nothing done; check it and try again`);
    }
    if (!response.ok) throw new Error(`${id}: ${await problem(response)}`);
    if (response.status !== 204) await response.text(); // 200 with the document, or 204: both are done
    showMessage(done, "info");
    await refresh();
  }

  // --- polling --------------------------------------------------------------------

  async function refresh() {
    const [services, servers] = await Promise.all([getJson("services"), getJson("servers")]);
    draw(services.data, servers.data);
    setText(document.getElementById("updated"), `updated ${new Date().toLocaleTimeString()}`);
  }

  async function poll() {
    try {
      if (document.hidden) return; // a background tab asks nothing; the next rate spans the pause
      await refresh();
      if (pollFailed) showMessage("");
      pollFailed = false;
    } catch (error) {
      pollFailed = true;
      showMessage(`cannot read the API: ${error.message}`);
    } finally {
      setTimeout(poll, PERIOD_MS);
    }
  }

  setText(document.getElementById("account"), canAct ? "admin account" : "read-only account");
  poll();
})();
