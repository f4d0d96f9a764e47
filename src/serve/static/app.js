// The page of `uniter serve`: plain browser JavaScript, no build step. It asks the JSON API for a
// score/answer and the alignment of the current (text, image), paints the image (synthetic-world
// scenes from their shapes, colours and boxes; uploads as pixels) with the model's regions on
// top, and shades regions by a word's transport-plan mass or attention.

const $ = (id) => document.getElementById(id);
const state = { info: null, gallery: [], image: null, alignment: null, word: null, pinned: null, region: null };

const COLOURS = { red: '#d64545', orange: '#f08c2e', yellow: '#e9c72b', green: '#3f9e4a', blue: '#3d6fd1', purple: '#8a4fc0', white: '#f3f3f3', black: '#26272b' };
const STUFF = { floor: '#d9cdb8', wall: '#e6e6ea', shadow: 'rgba(0,0,0,0.18)', table: '#a9825a', grass: '#9ccc7c', sky: '#bcdcf5' };

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(json.error || `HTTP ${res.status}`);
  return json;
}

// ---- painting a synthetic scene -------------------------------------------------------------

function paintShape(ctx, o, sx, sy) {
  const [x1, y1, x2, y2] = [o.box[0] * sx, o.box[1] * sy, o.box[2] * sx, o.box[3] * sy];
  const w = x2 - x1, h = y2 - y1, cx = (x1 + x2) / 2, cy = (y1 + y2) / 2;
  const fill = COLOURS[o.colour] || '#999';
  ctx.fillStyle = fill;
  ctx.strokeStyle = o.colour === 'black' ? '#000' : 'rgba(0,0,0,0.45)';
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  switch (o.shape) {
    case 'cube': {
      const d = Math.min(w, h) * 0.22;
      ctx.rect(x1, y1 + d, w - d, h - d);
      ctx.fill(); ctx.stroke();
      ctx.beginPath();
      ctx.moveTo(x1, y1 + d); ctx.lineTo(x1 + d, y1); ctx.lineTo(x2, y1); ctx.lineTo(x2 - d, y1 + d); ctx.closePath();
      ctx.moveTo(x2 - d, y1 + d); ctx.lineTo(x2, y1); ctx.lineTo(x2, y2 - d); ctx.lineTo(x2 - d, y2); ctx.closePath();
      ctx.fill(); ctx.stroke();
      ctx.fillStyle = 'rgba(255,255,255,0.25)';
      ctx.beginPath(); ctx.moveTo(x1, y1 + d); ctx.lineTo(x1 + d, y1); ctx.lineTo(x2, y1); ctx.lineTo(x2 - d, y1 + d); ctx.closePath(); ctx.fill();
      return;
    }
    case 'sphere': {
      const r = Math.min(w, h) / 2;
      const g = ctx.createRadialGradient(cx - r / 3, cy - r / 3, r / 8, cx, cy, r);
      g.addColorStop(0, 'rgba(255,255,255,0.75)'); g.addColorStop(0.25, fill); g.addColorStop(1, fill);
      ctx.fillStyle = g;
      ctx.arc(cx, cy, r, 0, 2 * Math.PI);
      break;
    }
    case 'cylinder': {
      const e = h * 0.12;
      ctx.rect(x1, y1 + e, w, h - 2 * e);
      ctx.fill();
      ctx.beginPath(); ctx.ellipse(cx, y2 - e, w / 2, e, 0, 0, Math.PI); ctx.fill(); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(x1, y1 + e); ctx.lineTo(x1, y2 - e); ctx.moveTo(x2, y1 + e); ctx.lineTo(x2, y2 - e); ctx.stroke();
      ctx.beginPath(); ctx.ellipse(cx, y1 + e, w / 2, e, 0, 0, 2 * Math.PI);
      ctx.fill(); ctx.fillStyle = 'rgba(255,255,255,0.25)'; ctx.fill(); ctx.stroke();
      return;
    }
    case 'cone': {
      const e = h * 0.1;
      ctx.moveTo(cx, y1); ctx.lineTo(x2, y2 - e); ctx.ellipse(cx, y2 - e, w / 2, e, 0, 0, Math.PI); ctx.lineTo(cx, y1);
      break;
    }
    case 'pyramid':
      ctx.moveTo(cx, y1); ctx.lineTo(x2, y2); ctx.lineTo(x1, y2); ctx.closePath();
      ctx.fill(); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(cx, y1); ctx.lineTo(cx + w * 0.12, y2); ctx.lineTo(x2, y2); ctx.closePath();
      ctx.fillStyle = 'rgba(0,0,0,0.18)'; ctx.fill();
      return;
    case 'ring': {
      const r = Math.min(w, h) / 2;
      ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.arc(cx, cy, r * 0.55, 0, 2 * Math.PI, true);
      ctx.fill('evenodd'); ctx.stroke();
      return;
    }
    case 'star': {
      const R = Math.min(w, h) / 2, r = R * 0.45;
      for (let i = 0; i < 10; i++) {
        const a = -Math.PI / 2 + (i * Math.PI) / 5, rr = i % 2 ? r : R;
        ctx.lineTo(cx + rr * Math.cos(a), cy + rr * Math.sin(a));
      }
      ctx.closePath();
      break;
    }
    case 'disk':
      ctx.ellipse(cx, cy, w / 2, Math.max(3, h / 4), 0, 0, 2 * Math.PI);
      break;
    default:
      ctx.rect(x1, y1, w, h);
  }
  ctx.fill(); ctx.stroke();
}

function paintScene(canvas, img) {
  const ctx = canvas.getContext('2d');
  const sx = canvas.width / img.width, sy = canvas.height / img.height;
  ctx.fillStyle = '#f1efe9';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!img.scene) {
    ctx.fillStyle = '#999'; ctx.font = '14px system-ui'; ctx.fillText(img.id, 10, 20);
    return;
  }
  for (const s of img.scene.stuff) {
    ctx.fillStyle = STUFF[s.stuff] || '#ddd';
    ctx.fillRect(s.box[0] * sx, s.box[1] * sy, (s.box[2] - s.box[0]) * sx, (s.box[3] - s.box[1]) * sy);
  }
  for (const o of img.scene.objects) paintShape(ctx, o, sx, sy);
}

// ---- regions ----------------------------------------------------------------------------------

function drawRegions(boxes, labels) {
  const svg = $('regions');
  svg.innerHTML = '';
  const W = svg.clientWidth, H = svg.clientHeight;
  // Large regions first, so that small ones stay on top and clickable.
  const order = boxes.map((b, k) => k).sort((i, j) => area(boxes[j]) - area(boxes[i]));
  for (const k of order) {
    const b = boxes[k];
    const r = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
    r.setAttribute('x', b[0] * W); r.setAttribute('y', b[1] * H);
    r.setAttribute('width', Math.max(1, (b[2] - b[0]) * W)); r.setAttribute('height', Math.max(1, (b[3] - b[1]) * H));
    r.dataset.region = String(k);
    r.dataset.mass = '0';
    r.addEventListener('click', () => pickRegion(k));
    const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
    title.textContent = `${k}: ${labels[k]}`;
    r.appendChild(title);
    svg.appendChild(r);
    const t = document.createElementNS('http://www.w3.org/2000/svg', 'text');
    t.setAttribute('x', b[0] * W + 3); t.setAttribute('y', b[1] * H + 13);
    t.textContent = `${k} ${labels[k]}`;
    svg.appendChild(t);
  }
}

function area(b) {
  return (b[2] - b[0]) * (b[3] - b[1]);
}

/** Mass of each region for a word: its tokens' rows of the plan, or of one layer's attention. */
function regionMass(word) {
  const a = state.alignment;
  const mode = document.querySelector('input[name=mode]:checked').value;
  const mass = new Array(a.regions).fill(0);
  for (const t of word.tokens) {
    if (mode === 'plan') a.plan[t].forEach((m, k) => (mass[k] += m));
    else {
      const layer = Number($('layer').value);
      const head = $('head').value;
      const heads = head === 'mean' ? [...Array(a.attention.heads).keys()] : [Number(head)];
      for (const h of heads) a.attention.textToRegion[layer][h][t].forEach((m, k) => (mass[k] += m / heads.length));
    }
  }
  return mass;
}

function shade(word) {
  const rects = [...$('regions').querySelectorAll('rect')];
  document.querySelectorAll('#words .word').forEach((el) => el.classList.toggle('active', word !== null && el.dataset.word === String(word)));
  if (word === null || !state.alignment) {
    rects.forEach((r) => { r.style.fillOpacity = '0'; r.dataset.mass = '0'; });
    return;
  }
  const mass = regionMass(state.alignment.words[word]);
  const max = Math.max(...mass, 1e-12);
  for (const r of rects) {
    const k = Number(r.dataset.region);
    r.dataset.mass = String(mass[k]);
    r.style.fillOpacity = String(0.75 * (mass[k] / max));
  }
}

function pickRegion(k) {
  const a = state.alignment;
  document.querySelectorAll('#regions rect').forEach((r) => r.classList.toggle('picked', Number(r.dataset.region) === k));
  if (!a) return;
  const rows = a.words.map((w, i) => ({ w: w.text, i, m: w.tokens.reduce((s, t) => s + a.plan[t][k], 0) })).sort((x, y) => y.m - x.m);
  const total = rows.reduce((s, r) => s + r.m, 0) || 1;
  $('region-words').innerHTML = `<b>region ${k} (${a.boxLabels[k]})</b>: its words by plan mass<table>${rows
    .slice(0, 8)
    .map((r) => `<tr><td>${escapeHtml(r.w)}</td><td>${(100 * r.m / total).toFixed(1)}%</td></tr>`)
    .join('')}</table>`;
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
}

function showAlignment(a) {
  state.alignment = a;
  state.pinned = null;
  const words = $('words');
  words.innerHTML = '';
  a.words.forEach((w, i) => {
    const s = document.createElement('span');
    s.className = 'word';
    s.textContent = w.text;
    s.dataset.word = String(i);
    s.addEventListener('mouseenter', () => shade(i));
    s.addEventListener('mouseleave', () => shade(state.pinned));
    s.addEventListener('click', () => { state.pinned = state.pinned === i ? null : i; shade(state.pinned); });
    words.appendChild(s);
  });
  $('layer').innerHTML = [...Array(a.attention.layers).keys()].map((l) => `<option value="${l}" ${l === a.attention.layers - 1 ? 'selected' : ''}>${l + 1}</option>`).join('');
  $('head').innerHTML = '<option value="mean">mean</option>' + [...Array(a.attention.heads).keys()].map((h) => `<option value="${h}">${h + 1}</option>`).join('');
  drawRegions(a.boxes, a.boxLabels);
  $('distance').textContent = `OT distance ${a.distance.toFixed(3)} (lower = better aligned); ${a.regions} regions, ${a.tokens.length} tokens`;
  $('region-words').textContent = '';
}

// ---- images -------------------------------------------------------------------------------------

function imageSpec() {
  const im = state.image;
  if (!im) return null;
  return im.kind === 'gallery' ? im.meta.id : { rgb: im.rgb, width: im.width, height: im.height };
}

function selectGallery(meta) {
  state.image = { kind: 'gallery', meta };
  document.querySelectorAll('#gallery canvas').forEach((c) => c.classList.toggle('selected', c.dataset.id === meta.id));
  paintScene($('picture'), meta);
  drawRegions(meta.regions.boxes, meta.regions.labels);
  $('image-name').textContent = `${meta.id} — ${meta.regions.boxes.length} regions`;
  $('suggestions').innerHTML = (meta.captions || []).map((c) => `<button type="button">${escapeHtml(c)}</button>`).join('');
  $('suggestions').querySelectorAll('button').forEach((b) => b.addEventListener('click', () => { $('text').value = b.textContent; run(); }));
  state.alignment = null;
  $('words').innerHTML = '';
}

async function upload(file) {
  const bitmap = await createImageBitmap(file);
  // The detector rescales to a 600-pixel short side anyway; keep the request small.
  const scale = Math.min(1, 1000 / Math.max(bitmap.width, bitmap.height));
  const w = Math.round(bitmap.width * scale), h = Math.round(bitmap.height * scale);
  const c = document.createElement('canvas');
  c.width = w; c.height = h;
  c.getContext('2d').drawImage(bitmap, 0, 0, w, h);
  const rgba = c.getContext('2d').getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  let bin = '';
  for (let i = 0; i < rgb.length; i += 0x8000) bin += String.fromCharCode(...rgb.subarray(i, i + 0x8000));
  state.image = { kind: 'upload', rgb: btoa(bin), width: w, height: h };
  const pic = $('picture');
  pic.getContext('2d').drawImage(bitmap, 0, 0, pic.width, pic.height);
  $('regions').innerHTML = '';
  $('image-name').textContent = `${file.name} (${w}x${h}); regions come from the detector when you run`;
  document.querySelectorAll('#gallery canvas').forEach((c2) => c2.classList.remove('selected'));
}

// ---- running ------------------------------------------------------------------------------------

function pct(x) { return `${(100 * x).toFixed(1)}%`; }

function renderResult(task, r) {
  switch (task) {
    case 'itm':
      return `<span class="big">${pct(r.probability)}</span> match <span class="bar" style="width:${Math.round(200 * r.probability)}px"></span>`;
    case 'vqa':
      return r.answers.map((a, i) => `${i ? '' : '<span class="big">'}${escapeHtml(a.label)}${i ? '' : '</span>'} ${pct(a.score)}`).join(' &nbsp; ');
    case 've':
      return `<span class="big">${escapeHtml(r.label)}</span> ` + r.scores.map((s) => `${s.label} ${pct(s.score)}`).join(', ');
    case 'nlvr2':
      return `<span class="big">${r.label}</span> P(true) ${pct(r.probability)}`;
    case 'refexp':
      return `<span class="big">region ${r.index}</span> ${escapeHtml(r.label)} ${pct(r.score)}`;
    default:
      return '';
  }
}

async function rankGallery() {
  const text = $('text').value.trim();
  if (!text || !state.gallery.length) return;
  const r = await api('/api/retrieval', { text, images: state.gallery.map((g) => g.id) });
  $('ranking-section').hidden = false;
  $('ranking').innerHTML = r.ranking.map((x) => `<li data-id="${x.id}">${x.id.replace(/^.*_0*/, '#').replace('.npz', '')} ${r.scoredBy === 'itm_output' ? pct(x.score) : x.score.toFixed(3)}</li>`).join('');
  // Reorder the gallery to match, best first.
  const box = $('gallery');
  for (const x of r.ranking) {
    const c = box.querySelector(`canvas[data-id="${CSS.escape(x.id)}"]`);
    if (c) box.appendChild(c);
  }
  $('result').innerHTML = `best match: <b>${r.ranking[0].id}</b> (${r.scoredBy})`;
}

async function run() {
  const text = $('text').value.trim();
  const task = $('task').value;
  const image = imageSpec();
  if (!text) return;
  $('result').textContent = '…';
  try {
    if (task === 'retrieval') {
      await rankGallery();
    } else {
      if (!image) throw new Error('pick an image first');
      let body = { text, image };
      if (task === 'nlvr2') {
        // The statement is judged on the current image and the next one in the gallery.
        const i = state.gallery.findIndex((g) => g.id === image);
        body = { text, images: [image, state.gallery[(i + 1) % state.gallery.length].id] };
      }
      const r = await api(`/api/${task}`, body);
      $('result').innerHTML = renderResult(task, r);
      if (task === 'refexp') pickRegion(r.index);
    }
    if (image) {
      showAlignment(await api('/api/alignment', { text, image }));
      document.body.dataset.aligned = String(Date.now());
    }
  } catch (e) {
    $('result').innerHTML = `<span class="error">${escapeHtml(e.message)}</span>`;
  }
}

let rankTimer = null;

async function start() {
  const [info, gallery] = await Promise.all([api('/api/info'), api('/api/gallery')]);
  state.info = info;
  state.gallery = gallery.images;
  $('info').textContent = `${info.model} — tasks: ${info.tasks.join(', ')} — ${info.config.layers} layers x ${info.config.heads} heads, hidden ${info.config.hidden_size}.${info.note ? ' ' + info.note : ''}`;
  $('task').innerHTML = info.tasks.map((t) => `<option value="${t}">${t}</option>`).join('');
  if (info.detector) $('upload-label').hidden = false;
  else $('upload-note').textContent = 'Photos need a detector: uniter serve --detector DIR.';
  for (const g of gallery.images) {
    const c = document.createElement('canvas');
    c.width = 200; c.height = Math.round(200 * g.height / g.width);
    c.dataset.id = g.id;
    c.title = g.id;
    paintScene(c, g);
    c.addEventListener('click', () => selectGallery(g));
    $('gallery').appendChild(c);
  }
  if (gallery.images.length) selectGallery(gallery.images[0]);
  $('ask').addEventListener('submit', (e) => { e.preventDefault(); run(); });
  $('text').addEventListener('input', () => {
    if ($('task').value !== 'retrieval') return;
    clearTimeout(rankTimer);
    rankTimer = setTimeout(() => rankGallery().catch((e) => ($('result').textContent = e.message)), 350);
  });
  $('upload').addEventListener('change', (e) => e.target.files[0] && upload(e.target.files[0]));
  document.querySelectorAll('input[name=mode], #layer, #head').forEach((el) => el.addEventListener('change', () => shade(state.pinned)));
  document.body.dataset.ready = '1';
}

start().catch((e) => ($('info').textContent = `failed to start: ${e.message}`));
