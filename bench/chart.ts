/** Renders the benchmark's per-scan figures as a PNG: a Vega spec, drawn to SVG, rasterised by resvg. */
import { writeFile } from 'node:fs/promises'
import { Resvg } from '@resvg/resvg-js'
import * as vega from 'vega'

export interface Point {
  scan: number
  design: string
  value: number
}

export interface Panel {
  title: string
  points: Point[]
}

const WIDTH = 260
const HEIGHT = 200
const GAP = 90

function panelSpec (panel: Panel, index: number): vega.GroupMark {
  const data = `p${index}`
  return {
    type: 'group',
    encode: { enter: { x: { value: index * (WIDTH + GAP) }, width: { value: WIDTH }, height: { value: HEIGHT } } },
    title: { text: panel.title, fontSize: 13 },
    scales: [
      { name: 'x', type: 'point', domain: { data, field: 'scan', sort: true }, range: [0, WIDTH], padding: 0.5 },
      { name: 'y', type: 'linear', domain: { data, field: 'value' }, range: [HEIGHT, 0], nice: true, zero: true }
    ],
    axes: [
      { orient: 'bottom', scale: 'x', title: 'scan' },
      { orient: 'left', scale: 'y', format: '~s', grid: true, gridScale: 'x' }
    ],
    marks: [{
      type: 'group',
      from: { facet: { name: `${data}f`, data, groupby: 'design' } },
      marks: [
        {
          type: 'line',
          from: { data: `${data}f` },
          encode: { enter: { x: { scale: 'x', field: 'scan' }, y: { scale: 'y', field: 'value' }, stroke: { scale: 'color', field: 'design' }, strokeWidth: { value: 2 } } }
        },
        {
          type: 'symbol',
          from: { data: `${data}f` },
          encode: { enter: { x: { scale: 'x', field: 'scan' }, y: { scale: 'y', field: 'value' }, fill: { scale: 'color', field: 'design' }, size: { value: 40 } } }
        }
      ]
    }]
  }
}

export async function renderChart (file: string, title: string, panels: Panel[]): Promise<void> {
  const spec: vega.Spec = {
    width: panels.length * (WIDTH + GAP) - GAP,
    height: HEIGHT,
    padding: 20,
    background: 'white',
    title: { text: title, fontSize: 15 },
    data: panels.map((p, i) => ({ name: `p${i}`, values: p.points })),
    scales: [{ name: 'color', type: 'ordinal', domain: ['tally', 'naive'], range: ['#1f77b4', '#d62728'] }],
    legends: [{ fill: 'color', orient: 'right', title: 'design' }],
    marks: panels.map(panelSpec)
  }
  const view = new vega.View(vega.parse(spec), { renderer: 'none' })
  const svg = await view.toSVG()
  view.finalize()
  const png = new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, font: { loadSystemFonts: true } }).render().asPng()
  await writeFile(file, png)
}
