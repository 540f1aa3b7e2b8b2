/**
 * Sums the V8 CPU profiles `npm run bench -- --profile DIR` wrote: self time per function
 * (with its file), busiest first, as shares of the busy samples (idle left out).
 *
 *   node --import tsx bench/profile-summary.ts DIR [top=30]
 */
import { readdir, readFile } from 'node:fs/promises'
import { basename, join } from 'node:path'

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }

const dir = process.argv[2]
if (dir === undefined) throw new Error('usage: node --import tsx bench/profile-summary.ts DIR [top]')
const top = Number(process.argv[3] ?? 30)
const selfUs = new Map<string, number>()
for (const file of (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile'))) {
  const profile = JSON.parse(await readFile(join(dir, file), 'utf8')) as Profile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  profile.samples.forEach((id, i) => {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame
    const name = `${functionName || '(anonymous)'} ${url === '' ? '' : `${basename(url)}:${lineNumber + 1}`}`.trim()
    selfUs.set(name, (selfUs.get(name) ?? 0) + (profile.timeDeltas[i] ?? 0))
  })
}
const busy = [...selfUs].filter(([name]) => name !== '(idle)')
const total = busy.reduce((n, [, us]) => n + us, 0)
console.log(`busy samples: ${(total / 1e6).toFixed(2)} s`)
for (const [name, us] of busy.sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`${(100 * us / total).toFixed(1).padStart(5)}%  ${(us / 1e6).toFixed(2).padStart(6)} s  ${name}`)
}
