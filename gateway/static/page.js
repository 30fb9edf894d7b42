// The search page's behaviour; a file, not inline, so the Content-Security-Policy can forbid inline script.
(() => {
  const file = document.getElementById('file'), drop = document.getElementById('drop');
  const preview = document.getElementById('preview'), text = document.getElementById('drop-text');
  const thr = document.getElementById('thr'), out = document.getElementById('thr-out');
  thr.addEventListener('input', () => { out.textContent = thr.value + '%'; });
  const clear = document.getElementById('clear'), fileError = document.getElementById('file-error');
  const prompt = text.textContent;
  const TYPES = ['image/jpeg', 'image/png', 'image/webp', 'image/gif'];
  const reset = () => {
    file.value = ''; preview.hidden = true; preview.removeAttribute('src');
    text.textContent = prompt; clear.hidden = true;
  };
  const show = () => {
    fileError.hidden = true;
    if (!file.files.length) { reset(); return; }
    if (!TYPES.includes(file.files[0].type)) {  // refused here, before any upload
      fileError.textContent = `“${file.files[0].name}” is not a photo we can read: choose a JPEG, PNG, WebP or GIF picture.`;
      fileError.hidden = false; reset(); return;
    }
    preview.src = URL.createObjectURL(file.files[0]); preview.hidden = false;
    text.textContent = file.files[0].name; clear.hidden = false;
  };
  clear.addEventListener('click', () => { reset(); fileError.hidden = true; });
  const take = (files) => {
    if (!files || !files.length) return;
    const dt = new DataTransfer(); dt.items.add(files[0]); file.files = dt.files; show();
  };
  file.addEventListener('change', show);
  ['dragover', 'dragenter'].forEach(e => drop.addEventListener(e, ev => { ev.preventDefault(); drop.classList.add('over'); }));
  ['dragleave', 'drop'].forEach(e => drop.addEventListener(e, () => drop.classList.remove('over')));
  drop.addEventListener('drop', ev => { ev.preventDefault(); take(ev.dataTransfer.files); });
  document.addEventListener('paste', ev => take(ev.clipboardData && ev.clipboardData.files));
})();
