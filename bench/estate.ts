/**
 * A synthetic AWS estate and a scanner's view of it, seeded and so reproducible: ~40 resource
 * types over 12 regions, realistic ARNs, tags and nested attributes, ~1 KB a resource; and a
 * scan simulator with churn (per scan, by default, 8% changed, 1% new, 1% vanished).
 */
import { uniformInt } from 'pure-rand/distribution/uniformInt'
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus'

const TYPES: Array<[type: string, service: string, arnPath: string]> = [
  ['aws::ec2::instance', 'ec2', 'instance/i-'], ['aws::ec2::volume', 'ec2', 'volume/vol-'],
  ['aws::ec2::security-group', 'ec2', 'security-group/sg-'], ['aws::ec2::vpc', 'ec2', 'vpc/vpc-'],
  ['aws::ec2::subnet', 'ec2', 'subnet/subnet-'], ['aws::ec2::network-interface', 'ec2', 'network-interface/eni-'],
  ['aws::ec2::snapshot', 'ec2', 'snapshot/snap-'], ['aws::ec2::image', 'ec2', 'image/ami-'],
  ['aws::s3::bucket', 's3', 'bucket-'], ['aws::iam::role', 'iam', 'role/service-role-'],
  ['aws::iam::policy', 'iam', 'policy/policy-'], ['aws::iam::user', 'iam', 'user/user-'],
  ['aws::lambda::function', 'lambda', 'function:fn-'], ['aws::rds::db-instance', 'rds', 'db:db-'],
  ['aws::rds::snapshot', 'rds', 'snapshot:rds-snap-'], ['aws::dynamodb::table', 'dynamodb', 'table/table-'],
  ['aws::sqs::queue', 'sqs', 'queue-'], ['aws::sns::topic', 'sns', 'topic-'],
  ['aws::kms::key', 'kms', 'key/'], ['aws::ecr::repository', 'ecr', 'repository/repo-'],
  ['aws::ecs::cluster', 'ecs', 'cluster/cluster-'], ['aws::ecs::service', 'ecs', 'service/svc-'],
  ['aws::eks::cluster', 'eks', 'cluster/eks-'], ['aws::elasticloadbalancing::loadbalancer', 'elasticloadbalancing', 'loadbalancer/app/lb-'],
  ['aws::cloudfront::distribution', 'cloudfront', 'distribution/E'], ['aws::route53::hostedzone', 'route53', 'hostedzone/Z'],
  ['aws::cloudwatch::alarm', 'cloudwatch', 'alarm:alarm-'], ['aws::logs::log-group', 'logs', 'log-group:/aws/lg-'],
  ['aws::secretsmanager::secret', 'secretsmanager', 'secret:secret-'], ['aws::ssm::parameter', 'ssm', 'parameter/param-'],
  ['aws::elasticache::cluster', 'elasticache', 'cluster:cache-'], ['aws::efs::file-system', 'elasticfilesystem', 'file-system/fs-'],
  ['aws::kinesis::stream', 'kinesis', 'stream/stream-'], ['aws::apigateway::restapi', 'apigateway', 'restapis/api-'],
  ['aws::states::state-machine', 'states', 'stateMachine:sm-'], ['aws::glue::job', 'glue', 'job/job-'],
  ['aws::sagemaker::notebook-instance', 'sagemaker', 'notebook-instance/nb-'], ['aws::redshift::cluster', 'redshift', 'cluster:rs-'],
  ['aws::autoscaling::group', 'autoscaling', 'autoScalingGroup:asg-'], ['aws::acm::certificate', 'acm', 'certificate/']
]
const REGIONS = ['us-east-1', 'us-east-2', 'us-west-1', 'us-west-2', 'eu-west-1', 'eu-west-2', 'eu-central-1',
  'eu-north-1', 'ap-southeast-1', 'ap-southeast-2', 'ap-northeast-1', 'sa-east-1']
const TEAMS = ['payments', 'search', 'platform', 'data', 'identity', 'growth', 'mobile', 'security']
const STATES = ['running', 'available', 'active', 'in-use', 'stopped']

export interface Resource {
  id: string
  type: string
  name: string
  region: string
  tags: Record<string, string>
  attributes: Record<string, unknown>
}

const hex = (n: number, width: number) => n.toString(16).padStart(width, '0')

/** Resource number `index` of the estate as it looks at `version` (a change bumps the version). */
export function makeResource (seed: number, account: string, index: number, version: number): Resource {
  const rng = xoroshiro128plus((seed * 0x9e3779b1 + index * 0x85ebca6b) | 0)
  const pick = <T>(list: readonly T[]) => list[uniformInt(rng, 0, list.length - 1)]!
  const [type, service, arnPath] = pick(TYPES)
  const region = pick(REGIONS)
  const team = pick(TEAMS)
  const suffix = hex(index, 8) + hex(uniformInt(rng, 0, 0xfffffff), 7)
  const global = service === 'iam' || service === 's3' || service === 'cloudfront' || service === 'route53'
  const id = `arn:aws:${service}:${global ? '' : region}:${global ? '' : account}:${arnPath}${suffix}`
  const created = new Date(Date.UTC(2024, 0, 1) + uniformInt(rng, 0, 700) * 86_400_000).toISOString()
  return {
    id,
    type,
    name: `${team}-${type.split('::')[2]}-${index}`,
    region: global ? 'global' : region,
    tags: {
      team,
      env: pick(['prod', 'staging', 'dev']),
      'cost-center': `cc-${uniformInt(rng, 100, 999)}`,
      owner: `${team}@example.com`,
      'managed-by': pick(['terraform', 'cloudformation', 'console']),
      revision: String(version)
    },
    attributes: {
      arn: id,
      createdAt: created,
      state: { name: pick(STATES), code: uniformInt(rng, 0, 80), transitionedAt: version === 0 ? created : `rev-${version}` },
      encryption: { enabled: uniformInt(rng, 0, 1) === 1, kmsKeyId: `arn:aws:kms:${region}:${account}:key/${hex(uniformInt(rng, 0, 0xffffff), 8)}` },
      network: {
        vpcId: `vpc-${hex(uniformInt(rng, 0, 0xffff), 8)}`,
        subnetIds: [`subnet-${hex(uniformInt(rng, 0, 0xffff), 8)}`, `subnet-${hex(uniformInt(rng, 0, 0xffff), 8)}`],
        securityGroups: [{ id: `sg-${hex(uniformInt(rng, 0, 0xffff), 8)}`, name: `${team}-default` }]
      },
      sizing: { cpu: pick([1, 2, 4, 8, 16]), memoryMiB: pick([512, 1024, 4096, 16384]), storageGb: uniformInt(rng, 8, 2048) },
      policy: { version: '2012-10-17', statements: [{ effect: 'Allow', actions: [`${service}:Describe*`, `${service}:Get*`], resource: '*' }] },
      description: `${type} owned by ${team}, provisioned for workload ${hex(uniformInt(rng, 0, 0xffffff), 6)} in ${region}`
    }
  }
}

export interface ChurnRates {
  changed: number
  added: number
  vanished: number
}

export interface Scan {
  /** Estate indices this scan reports, with the version of each. */
  indices: Int32Array
  versions: Uint16Array
  changed: number
  added: number
  vanished: number
}

/**
 * The scanner's successive views of one account. The first scan reports the whole estate;
 * each later one drops `vanished`, bumps the version of `changed` and adds `added` (shares of
 * the previous scan's size), chosen by a seeded generator.
 */
export class ScanSimulator {
  private live: number[] = []
  private readonly versions = new Map<number, number>()
  private next = 0
  private scans = 0

  constructor (private readonly seed: number, private readonly size: number, private readonly churn: ChurnRates) {}

  nextScan (): Scan {
    const rng = xoroshiro128plus((this.seed * 31 + this.scans++) | 0)
    let changed = 0
    let added = 0
    let vanished = 0
    if (this.live.length === 0) {
      this.live = Array.from({ length: this.size }, (_, i) => i)
      this.next = this.size
      added = this.size
    } else {
      const n = this.live.length
      // A partial Fisher-Yates shuffle picks distinct victims for vanishing and changing.
      const order = this.live.slice()
      const victims = Math.round(n * this.churn.vanished) + Math.round(n * this.churn.changed)
      for (let i = 0; i < victims; i++) {
        const j = uniformInt(rng, i, n - 1)
        const tmp = order[i]!
        order[i] = order[j]!
        order[j] = tmp
      }
      vanished = Math.round(n * this.churn.vanished)
      const gone = new Set(order.slice(0, vanished))
      for (const index of order.slice(vanished, victims)) {
        this.versions.set(index, (this.versions.get(index) ?? 0) + 1)
        changed++
      }
      added = Math.round(n * this.churn.added)
      this.live = this.live.filter((i) => !gone.has(i))
      for (let k = 0; k < added; k++) this.live.push(this.next++)
      for (const index of gone) this.versions.delete(index)
    }
    return {
      indices: Int32Array.from(this.live),
      versions: Uint16Array.from(this.live, (i) => this.versions.get(i) ?? 0),
      changed,
      added,
      vanished
    }
  }
}
