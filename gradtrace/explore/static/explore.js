// The explorer's page script. Untrusted text is only ever set with textContent.
(function () {
  'use strict';

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (cls) { node.className = cls; }
    return node;
  }

  function fmt(x, digits) {
    return (x === null || x === undefined) ? 'n/a' : Number(x).toPrecision(digits || 3);
  }

  function fillCluster(panel, c) {
    panel.replaceChildren();
    panel.appendChild(el('h3', '#' + c.rank + ' [' + c.level + '] ' + c.label, 'cluster-label'));
    var facts = [
      ['share of validation texts from B', fmt(c.share_b) + ' (overall ' + fmt(c.overall_share_b) + ')'],
      ['validation texts A / B', c.valid_a + ' / ' + c.valid_b],
      ['q-value (BH)', fmt(c.q_value) + (c.flagged ? ' (flagged at FDR ' + c.alpha + ')' : ' (not flagged)')],
      ['log odds ratio', fmt(c.log_odds)],
      ['keywords', c.keywords.join(', ')]
    ];
    var table = el('table');
    facts.forEach(function (f) {
      var tr = el('tr'); tr.appendChild(el('th', f[0])); tr.appendChild(el('td', f[1])); table.appendChild(tr);
    });
    panel.appendChild(table);
    [['texts from B', c.examples_b], ['texts from A', c.examples_a], ['representative texts', c.medoids]].forEach(function (part) {
      panel.appendChild(el('h4', part[0]));
      if (!part[1].length) { panel.appendChild(el('p', 'none', 'note')); }
      part[1].forEach(function (t) { panel.appendChild(el('blockquote', t, 'cluster-text')); });
    });
    var link = el('a', 'open the cluster page', 'cluster-page');
    // the cluster's own diff (the page may be an audit's or a loop round's that shows its diff)
    link.href = '/a/' + encodeURIComponent(c.diff) + '/p/cluster/' + encodeURIComponent(c.index);
    panel.appendChild(link);
    (c.behaviours || []).forEach(function (b) { fillBehaviour(panel, b); });
  }

  // An audit's behaviour that holds the cluster: its top training examples and the verification.
  function fillBehaviour(panel, b) {
    var box = el('div', null, 'panel-behaviour');
    var head = el('h4', 'behaviour #' + (b.index + 1) + ': ');
    var link = el('a', b.label, 'behaviour-link');
    link.href = '/a/' + encodeURIComponent(b.audit) + '/p/behaviour/' + encodeURIComponent(b.index);
    head.appendChild(link);
    box.appendChild(head);
    box.appendChild(el('p', 'skewed to ' + b.skew + ', q ' + fmt(b.q_value) + '; share of A\'s texts ' + fmt(b.share_a.share) +
                       ', of B\'s ' + fmt(b.share_b.share), 'note'));
    if (b.proponents.length) {
      box.appendChild(el('p', 'top training examples (proponents):'));
      var table = el('table', null, 'panel-proponents');
      b.proponents.forEach(function (p) {
        var tr = el('tr'); tr.appendChild(el('td', p.rank, 'num')); tr.appendChild(el('td', p.id)); tr.appendChild(el('td', fmt(p.score, 4), 'num'));
        table.appendChild(tr);
      });
      box.appendChild(table);
    } else {
      box.appendChild(el('p', 'not traced', 'note'));
    }
    var v = b.verification;
    box.appendChild(el('p', v ? ('verification: B\'s share ' + fmt(v.before) + ' before, ' + fmt(v.topk) + ' after removing the top ' + v.k +
                                 ' proponents, ' + fmt(v.random) + ' after removing ' + v.k + ' random examples; top-K lowered it more: ' +
                                 (v.topk_better ? 'yes' : 'no'))
                             : 'not verified', 'panel-verification'));
    panel.appendChild(box);
  }

  function showCluster(url) {
    var panel = document.getElementById('cluster-panel');
    if (!panel) { return; }
    panel.replaceChildren(el('p', 'loading…', 'note'));
    fetch(url, {credentials: 'same-origin'}).then(function (r) {
      return r.json().then(function (body) { return {ok: r.ok, body: body}; });
    }).then(function (res) {
      if (res.ok) { fillCluster(panel, res.body); } else { panel.replaceChildren(el('p', res.body.error || 'not a tested cluster', 'note')); }
    }).catch(function () { panel.replaceChildren(el('p', 'could not load the cluster', 'error')); });
  }

  document.addEventListener('gradtrace:plotted', function (ev) {
    var plot = ev.target;
    var click = plot.getAttribute('data-click');
    if (!click) { return; }
    var base = plot.getAttribute('data-base') || '';
    plot.on('plotly_click', function (d) {
      if (!d.points || !d.points.length) { return; }
      var value = encodeURIComponent(String(d.points[0].customdata));
      if (click === 'link') { window.location.href = base + value; } else if (click === 'panel') { showCluster(base + value); }
    });
  });

  document.querySelectorAll('button.show-cluster').forEach(function (b) {
    b.addEventListener('click', function () { showCluster(b.getAttribute('data-url')); });
  });
})();
