// The search page's behaviour; a file, not inline, so the Content-Security-Policy can forbid inline script.
// Without it the page still works: the file input shows as a plain one and every setting needs "Search".
(() => {
  document.documentElement.classList.add('js');
  const $ = (id) => document.getElementById(id);
  const form = $('search'), file = $('file'), drop = $('drop'), stage = $('stage'), preview = $('preview');
  const text = $('drop-text'), choose = $('choose'), clear = $('clear'), whole = $('whole'), hint = $('crop-hint');
  const box = $('box'), crop = $('crop'), token = $('query-token'), picture = $('query-picture');
  const url = $('url'), thr = $('thr'), out = $('thr-out'), go = $('go'), busy = $('busy'), fileError = $('file-error');
  const TYPES = ['image/jpeg', 'image/png', 'image/webp', 'image/gif'];
  const PROMPT = window.matchMedia('(pointer: coarse)').matches ? 'Take a photo, or choose one'
    : 'Drop a photo here, or paste one';

  file.tabIndex = -1;  // the "Choose a photo" button opens it: no second, invisible tab stop or name
  file.setAttribute('aria-hidden', 'true');
  // ---- phones: a "Take a photo" button opens the camera, and the wording fits a finger (no drop, no paste)
  const camera = $('camera'), cameraButton = $('camera-button');
  camera.setAttribute('aria-hidden', 'true');  // "Take a photo" opens it
  const touch = window.matchMedia('(pointer: coarse)').matches;
  if (touch) {
    cameraButton.hidden = false;
    if (preview.hidden) text.textContent = PROMPT;
    cameraButton.addEventListener('click', () => camera.click());
    camera.addEventListener('change', () => { take(camera.files); camera.value = ''; });
  }
  thr.addEventListener('input', () => { out.textContent = thr.value + '%'; });
  choose.addEventListener('click', () => file.click());
  drop.addEventListener('click', (ev) => {  // the empty drop box opens the chooser too
    if (preview.hidden && ev.target !== choose && ev.target !== file) file.click();
  });

  // ---- the photo: chosen, dropped or pasted; checked here before anything is sent; removable
  const forgetQuery = () => { token.value = ''; picture.value = ''; };
  const reset = () => {
    file.value = ''; preview.hidden = true; preview.removeAttribute('src'); forgetQuery(); unbox();
    stage.tabIndex = -1;
    text.textContent = PROMPT; choose.textContent = 'Choose a photo'; clear.hidden = true; hint.hidden = true;
  };
  const show = () => {
    fileError.hidden = true;
    if (!file.files.length) { if (!token.value) reset(); return; }
    if (!TYPES.includes(file.files[0].type)) {
      fileError.textContent = `“${file.files[0].name}” is not a photo we can read: choose a JPEG, PNG, WebP or GIF picture.`;
      fileError.hidden = false; file.value = ''; return;
    }
    forgetQuery(); unbox(); asPhotoSearch();
    shrinkChosen();
    preview.src = URL.createObjectURL(file.files[0]); preview.hidden = false;
    text.textContent = file.files[0].name; choose.textContent = 'Choose another photo';
    clear.hidden = false; hint.hidden = false;
  };
  clear.addEventListener('click', () => { reset(); fileError.hidden = true; choose.focus(); });
  function asPhotoSearch() {  // a "More like this" page's form refines the product until a photo is chosen
    if (!form.dataset.anchor) return;
    delete form.dataset.anchor; form.method = 'post'; form.action = form.dataset.searchAction;
    const anchorPicture = $('anchor-picture'); if (anchorPicture) anchorPicture.remove();
  }

  // ---- a big phone photo is shrunk here before it is sent (long side LONG_SIDE, JPEG): any photo is accepted,
  // and a slow link sends a few hundred KB instead of megabytes. Search waits for it; a photo the browser
  // cannot decode is sent as it is (the server then says what is wrong with it).
  const LONG_SIDE = 1024;
  const shrink = async (original) => {
    const bitmap = await createImageBitmap(original, {imageOrientation: 'from-image'});
    const scale = Math.min(1, LONG_SIDE / Math.max(bitmap.width, bitmap.height));
    if (scale === 1 && original.size <= 1024 * 1024) return original;
    const canvas = document.createElement('canvas');
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height);  // a transparent PNG on white
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((done) => canvas.toBlob(done, 'image/jpeg', 0.9));
    return blob ? new File([blob], original.name.replace(/\.[^.]*$/, '') + '.jpg', {type: 'image/jpeg'}) : original;
  };
  function shrinkChosen() {
    const original = file.files[0];
    go.disabled = true; busy.textContent = 'Preparing your photo…';
    shrink(original).catch(() => original).then((small) => {
      if (small !== original && file.files[0] === original) {
        const dt = new DataTransfer(); dt.items.add(small); file.files = dt.files;
      }
    }).finally(() => { go.disabled = false; busy.textContent = ''; });
  }
  const take = (files) => {
    if (!files || !files.length) return;
    const dt = new DataTransfer(); dt.items.add(files[0]); file.files = dt.files; show();
  };
  file.addEventListener('change', show);
  ['dragover', 'dragenter'].forEach(e => drop.addEventListener(e, ev => { ev.preventDefault(); drop.classList.add('over'); }));
  ['dragleave', 'drop'].forEach(e => drop.addEventListener(e, () => drop.classList.remove('over')));
  drop.addEventListener('drop', ev => { ev.preventDefault(); take(ev.dataTransfer.files); });
  document.addEventListener('paste', ev => take(ev.clipboardData && ev.clipboardData.files));

  // ---- crop: drag a box on the photo; only that region is searched (crop = left,top,right,bottom as fractions).
  // Dragging inside a box moves it, from its bottom-right corner resizes it. Once the photo has results, a box
  // drawn, moved or resized searches by itself when the pointer lets go and rests (FOLLOW_MS).
  const FOLLOW_MS = 700, CORNER = 0.08;
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  let drag = null, follow = 0;
  const at = (ev) => {
    const r = preview.getBoundingClientRect();
    const f = (v) => Math.min(1, Math.max(0, v));
    return {x: f((ev.clientX - r.left) / r.width), y: f((ev.clientY - r.top) / r.height)};
  };
  const draw = (a, b) => {
    const l = Math.min(a.x, b.x), t = Math.min(a.y, b.y), w = Math.abs(a.x - b.x), h = Math.abs(a.y - b.y);
    Object.assign(box.style, {left: `${l * 100}%`, top: `${t * 100}%`, width: `${w * 100}%`, height: `${h * 100}%`});
    box.hidden = false;
    return [l, t, l + w, t + h];
  };
  function unbox() { crop.value = ''; box.hidden = true; whole.hidden = true; drag = null; clearTimeout(follow); }
  const shown = () => {  // the box on the photo: drawn by the shopper, or the part the search used
    if (crop.value) return crop.value.split(',').map(Number);
    return !box.hidden && box.dataset.found ? box.dataset.found.split(',').map(Number) : null;
  };
  if (box.dataset.found && !preview.hidden) {  // the part of a whole photo the search used (gateway/locate.py)
    const [l, t, r, b] = box.dataset.found.split(',').map(Number);
    draw({x: l, y: t}, {x: r, y: b});
  }
  document.querySelectorAll('.dot').forEach((dot) => {  // each other item, at its middle
    const [l, t, r, b] = dot.dataset.box.split(',').map(Number);
    Object.assign(dot.style, {left: `${(l + r) * 50}%`, top: `${(t + b) * 50}%`});
  });
  const following = () => Boolean(token.value && picture.value) && !file.files.length
    && url.value === url.defaultValue;
  const dragged = (p) => {  // the box a drag makes so far
    const {mode, from, was} = drag;
    if (mode === 'new') return draw(from, p);
    const [l, t, r, b] = was, dx = p.x - from.x, dy = p.y - from.y;
    if (mode === 'resize') return draw({x: l, y: t}, {x: clamp(r + dx, l + 0.04, 1), y: clamp(b + dy, t + 0.04, 1)});
    const x = clamp(l + dx, 0, 1 - (r - l)), y = clamp(t + dy, 0, 1 - (b - t));
    return draw({x, y}, {x: x + r - l, y: y + b - t});
  };
  stage.addEventListener('pointerdown', (ev) => {
    if (preview.hidden || ev.target.closest('.dot')) return;
    ev.preventDefault(); clearTimeout(follow);
    const p = at(ev), was = shown();
    const inside = was && p.x >= was[0] && p.x <= was[2] && p.y >= was[1] && p.y <= was[3];
    const corner = inside && was[2] - p.x < CORNER && was[3] - p.y < CORNER;
    drag = {mode: corner ? 'resize' : inside ? 'move' : 'new', from: p, was};
    stage.setPointerCapture(ev.pointerId);
  });
  stage.addEventListener('pointermove', (ev) => { if (drag) dragged(at(ev)); });
  stage.addEventListener('pointerup', (ev) => {
    if (!drag) return;
    const moved = Math.abs(at(ev).x - drag.from.x) + Math.abs(at(ev).y - drag.from.y) > 0.01;
    const [l, t, r, b] = dragged(at(ev)), mode = drag.mode; drag = null;
    if (mode === 'new' && (r - l < 0.04 || b - t < 0.04)) { unbox(); return; }  // a click, not a box
    if (mode !== 'new' && !moved) return;  // a click on the box changes nothing
    crop.value = [l, t, r, b].map(v => v.toFixed(4)).join(',');
    whole.hidden = false;
    if (following()) follow = setTimeout(() => form.requestSubmit(), FOLLOW_MS);
  });
  whole.addEventListener('click', unbox);

  // ---- crop from the keyboard: with the photo focused, an arrow draws a box in the middle, arrows move it,
  // Shift + arrows resize it, Enter searches the box, Escape removes it
  const STEP = 0.05, MIN = 0.1;
  const keyBox = (l, t, r, b) => {
    draw({x: l, y: t}, {x: r, y: b});
    crop.value = [l, t, r, b].map(v => v.toFixed(4)).join(','); whole.hidden = false;
  };
  const MOVES = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1]};
  stage.addEventListener('keydown', (ev) => {
    if (preview.hidden) return;
    if (ev.key === 'Escape' && crop.value) { ev.preventDefault(); unbox(); return; }
    if (ev.key === 'Enter' && crop.value) { ev.preventDefault(); form.requestSubmit(); return; }
    const move = MOVES[ev.key];
    if (!move) return;
    ev.preventDefault();
    if (!shown()) { keyBox(0.25, 0.25, 0.75, 0.75); return; }
    let [l, t, r, b] = shown();  // drawn with the pointer or the keys, or the part the search used
    const [dx, dy] = move.map(v => v * STEP);
    if (ev.shiftKey) {  // resize: the right and bottom edges
      r = clamp(r + dx, l + MIN, 1); b = clamp(b + dy, t + MIN, 1);
    } else {  // move, the size kept
      const w = r - l, h = b - t;
      l = clamp(l + dx, 0, 1 - w); t = clamp(t + dy, 0, 1 - h); r = l + w; b = t + h;
    }
    keyBox(l, t, r, b);
  });
  const stageFocus = () => { stage.tabIndex = preview.hidden ? -1 : 0; };
  preview.addEventListener('load', stageFocus); stageFocus();

  // ---- searching: a busy state; a crop of the last query's picture sends that picture (the original is not kept)
  // A photo over the gateway's limit (one the browser could not shrink) is stopped here, so every input stays.
  const maxBytes = Number(form.dataset.maxBytes) || Infinity;
  form.addEventListener('submit', (ev) => {
    clearTimeout(follow);
    if (file.files.length && file.files[0].size > maxBytes) {
      ev.preventDefault();
      const mb = Math.round(maxBytes / 1024 / 1024 * 100) / 100;
      fileError.textContent = `That photo is too large to send (over ${mb} MB): choose a smaller one, or take it at a lower resolution.`;
      fileError.hidden = false; return;
    }
    if (ev.submitter && ev.submitter.classList.contains('dot')) crop.value = '';  // an item: from the token
    if (file.files.length || url.value !== url.defaultValue) asPhotoSearch();  // a new query, not a refine
    // the last query's picture goes as the photo with a box drawn on it, or when it has no token (kept from a
    // search the service could not answer)
    if ((crop.value || !token.value) && !file.files.length && picture.value && url.value === url.defaultValue) {
      const bytes = Uint8Array.from(atob(picture.value.split(',')[1]), c => c.charCodeAt(0));
      const dt = new DataTransfer(); dt.items.add(new File([bytes], 'photo.jpg', {type: 'image/jpeg'}));
      file.files = dt.files; forgetQuery();
    }
    go.disabled = true; go.textContent = 'Searching…'; busy.textContent = 'Searching…';
    form.setAttribute('aria-busy', 'true');
  });
  window.addEventListener('pageshow', () => {  // back to a page the browser kept: usable again
    go.disabled = false; go.textContent = 'Search'; busy.textContent = ''; form.removeAttribute('aria-busy');
  });

  // ---- refine: a changed setting re-runs the same query (its token: no upload, no model call) once the shopper
  // commits it (WCAG 3.2.2 On Input): a pick with the mouse or a finger, Enter, or leaving the control. Walking a
  // select or the slider with the arrow keys searches nothing until then.
  const anchored = () => Boolean(form.dataset.anchor) && !file.files.length && url.value === url.defaultValue;
  const canRefine = () => anchored()
    || (token.value && !file.files.length && !crop.value && url.value === url.defaultValue);
  const valueOf = (el) => (el.type === 'checkbox' ? String(el.checked) : el.value);
  const settings = [thr, $('category'), $('first'), $('min-price'), $('max-price')].filter(Boolean);
  const asked = new Map(settings.map(el => [el, valueOf(el)]));
  const commit = (el) => {
    if (valueOf(el) === asked.get(el) || !canRefine()) return;
    asked.set(el, valueOf(el));
    form.requestSubmit();
  };
  let keyed = false;  // the last change came from a key (an arrow), not a pick
  settings.forEach(el => {
    el.addEventListener('pointerdown', () => { keyed = false; });
    el.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && canRefine()) { ev.preventDefault(); keyed = false; commit(el); return; }
      keyed = ev.key !== 'Tab';
    });
    el.addEventListener('change', () => { if (!keyed || el.type === 'checkbox') commit(el); });
    el.addEventListener('blur', () => { keyed = false; commit(el); });
  });

  // ---- results first: focus and scroll to them (after "Show more", to the first new one)
  const results = $('results');
  if (results) {
    const list = results.querySelector('ol.results'), cards = results.querySelectorAll('li.card');
    const first = list && list.dataset.firstNew !== undefined ? cards[Number(list.dataset.firstNew)] : null;
    const target = first || results;
    target.focus({preventScroll: true}); target.scrollIntoView({block: 'start'});
  }
})();
