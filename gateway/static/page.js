// The search page's behaviour; a file, not inline, so the Content-Security-Policy can forbid inline script.
(() => {
  const file = document.getElementById('file'), drop = document.getElementById('drop');
  const preview = document.getElementById('preview'), text = document.getElementById('drop-text');
  const thr = document.getElementById('thr'), out = document.getElementById('thr-out');
  thr.addEventListener('input', () => { out.textContent = thr.value + '%'; });
  const show = () => {
    if (!file.files.length) return;
    preview.src = URL.createObjectURL(file.files[0]); preview.hidden = false;
    text.textContent = file.files[0].name;
  };
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
